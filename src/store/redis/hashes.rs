//! Many hashes' fields in one go. A Feast row is a hash read with HMGET, one command per entity:
//! sent one by one through the Redis client, each pays the client's per-command work (a future,
//! a response channel, a timer, a trip through its router task). Queued as one pipeline they
//! share one router message and one response channel, and Redis still runs plain HMGETs.
//!
//! (Measured and dropped: one EVAL of a script running every HMGET inside Redis cut the proxy's
//! CPU per entity by a third but more than doubled Redis's, and Redis is the single thread
//! every shard shares.)

use bytes::Bytes;
use fred::clients::{Client, Pipeline, WithOptions};
use fred::error::{Error, ErrorKind};
use fred::prelude::*;
use fred::types::Key;

use crate::store::{Fetched, FieldSet};

/// The fields of each hash in `keys` (one field set for all: a batch of one view), in order:
/// [`Fetched::Fields`] or [`Fetched::WrongType`] per key, or the error that failed the call.
pub async fn read(
    client: &WithOptions<Client>,
    keys: &[Bytes],
    fields: &FieldSet,
) -> Result<Vec<Fetched>, Error> {
    let names = || -> Vec<Key> {
        fields
            .fields()
            .iter()
            .map(|f| Key::from(f.clone()))
            .collect()
    };
    if keys.len() == 1 {
        return answer(
            client
                .hmget::<Vec<Option<Bytes>>, _, _>(Key::from(keys[0].clone()), names())
                .await,
        )
        .map(|f| vec![f]);
    }
    let pipeline = Pipeline::from(client.clone());
    for k in keys {
        // Queued in memory; nothing is sent until `try_all`.
        let _: () = pipeline.hmget(Key::from(k.clone()), names()).await?;
    }
    pipeline
        .try_all::<Vec<Option<Bytes>>>()
        .await
        .into_iter()
        .map(answer)
        .collect()
}

/// One HMGET's answer: a key holding another type is that key's problem (WRONGTYPE), not the
/// node's.
fn answer(r: Result<Vec<Option<Bytes>>, Error>) -> Result<Fetched, Error> {
    match r {
        Ok(values) => Ok(Fetched::Fields(values)),
        Err(e) if e.kind() == &ErrorKind::InvalidArgument => Ok(Fetched::WrongType),
        Err(e) => Err(e),
    }
}
