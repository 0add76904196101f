//! Many hashes' fields in one round trip. A Feast row is a hash read with HMGET, one command per
//! entity: at 100 entities per GET that is 100 commands through the Redis client, whose
//! per-command work (a future, an encode, a response channel, a timer) then dominates the
//! proxy's CPU. One EVAL of a short script runs every HMGET of a batch inside Redis and answers
//! them as one array: one command per batch, whatever its size.
//!
//! Scripting can be disabled on a server (ACLs, managed Redis); the node then falls back, once
//! and for good, to one HMGET per entity.

use std::cell::Cell;

use bytes::Bytes;
use fred::clients::{Client, WithOptions};
use fred::error::{Error, ErrorKind};
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Key};
use tracing::warn;

use crate::store::{Fetched, FieldSet};

/// HMGET of every key in KEYS with the fields in ARGV; a key holding another type answers 0 in
/// its place instead of failing the whole script.
const SCRIPT: &str = "local out = {} \
for i, k in ipairs(KEYS) do \
local r = redis.pcall('HMGET', k, unpack(ARGV)) \
if type(r) == 'table' and r.err then out[i] = 0 else out[i] = r end \
end return out";

/// More fields than this and Lua's `unpack` could run out of stack: plain HMGETs instead.
const MAX_SCRIPT_FIELDS: usize = 1000;

/// Whether a node runs the script, learnt from its answers.
#[derive(Default)]
pub struct HashReader {
    refused: Cell<bool>,
}

impl HashReader {
    /// True once the node refused a script: every hash is then read with its own HMGET.
    pub fn scripts_refused(&self) -> bool {
        self.refused.get()
    }

    /// The fields of each hash in `keys` (one field set for all: a batch of one view), in order:
    /// [`Fetched::Fields`] or [`Fetched::WrongType`] per key, or the error that failed the call.
    pub async fn read(
        &self,
        client: &WithOptions<Client>,
        keys: &[Bytes],
        fields: &FieldSet,
        addr: &str,
    ) -> Result<Vec<Fetched>, Error> {
        if keys.len() > 1 && fields.len() <= MAX_SCRIPT_FIELDS && !self.refused.get() {
            match eval(client, keys, fields).await {
                Ok(out) => return Ok(out),
                Err(e) if refused(&e) => {
                    warn!(node = addr, error = %e, "Redis refuses scripts: reading Feast rows with one HMGET each (more proxy CPU per entity)");
                    self.refused.set(true);
                }
                Err(e) => return Err(e),
            }
        }
        let calls = keys.iter().map(|k| {
            let names: Vec<Key> = fields
                .fields()
                .iter()
                .map(|f| Key::from(f.clone()))
                .collect();
            client.hmget::<Vec<Option<Bytes>>, _, _>(Key::from(k.clone()), names)
        });
        let mut out = Vec::with_capacity(keys.len());
        for r in futures::future::join_all(calls).await {
            out.push(match r {
                Ok(values) => Fetched::Fields(values),
                Err(e) if e.kind() == &ErrorKind::InvalidArgument => Fetched::WrongType,
                Err(e) => return Err(e),
            });
        }
        Ok(out)
    }
}

async fn eval(
    client: &WithOptions<Client>,
    keys: &[Bytes],
    fields: &FieldSet,
) -> Result<Vec<Fetched>, Error> {
    let mut args: Vec<Value> = Vec::with_capacity(2 + keys.len() + fields.len());
    args.push(Value::from_static_str(SCRIPT));
    args.push(Value::Integer(keys.len() as i64));
    args.extend(keys.iter().map(|k| Value::Bytes(k.clone())));
    args.extend(fields.fields().iter().map(|f| Value::Bytes(f.clone())));
    let cmd = CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false);
    let reply: Value = client.custom(cmd, args).await?;
    let Value::Array(rows) = reply else {
        return Err(Error::new(
            ErrorKind::Protocol,
            "EVAL answered something else than an array",
        ));
    };
    if rows.len() != keys.len() {
        return Err(Error::new(
            ErrorKind::Protocol,
            "EVAL answered another number of rows than keys",
        ));
    }
    rows.into_iter()
        .map(|row| match row {
            Value::Integer(0) => Ok(Fetched::WrongType),
            row => row.convert::<Vec<Option<Bytes>>>().map(Fetched::Fields),
        })
        .collect()
}

/// An answer that means the server will not run scripts, not that it failed.
fn refused(e: &Error) -> bool {
    let d = e.details();
    !matches!(
        e.kind(),
        ErrorKind::Timeout | ErrorKind::IO | ErrorKind::Canceled
    ) && (d.contains("NOPERM")
        || d.contains("unknown command")
        || d.contains("scripting")
        || d.contains("NOSCRIPT")
        || d.contains("Lua"))
}
