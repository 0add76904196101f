//! Thin async Rust client for featureproxy (wire protocol v1).
//!
//! featureproxy serves ML feature vectors: a view name and a batch of entity keys in, an
//! `n x row_bytes` matrix out, with a status and an age per entity. This crate speaks the binary
//! protocol of [`featureproxy_protocol`] over TCP or TLS on tokio (current-thread or multi-thread
//! runtime).
//!
//! * [`Client`] keeps a small pool of connections ([`ClientOptions::pool_size`]). Each one is
//!   multiplexed: many requests are in flight at once and replies are matched to callers by
//!   request id, so one connection carries any number of concurrent tasks. A broken connection
//!   fails its in-flight calls with [`Error::ConnectionClosed`] and is reopened by the next call;
//!   a read-only call (GET, PING, SCHEMA) the server closed the connection under before any reply
//!   to it began is sent once more on the reopened one instead (see [`Client`]).
//! * Every call is bounded by [`ClientOptions::timeout`] (default 2 s, beyond the proxy's 1 s
//!   `write_timeout`, so a PUT hears the proxy's own answer) and fails with [`Error::Timeout`]
//!   rather than hanging.
//! * A GET the server sheds (`OVERLOADED`) is retried once after a jittered pause (10-20 ms by
//!   default), within the call's timeout and a retry budget that holds retries to 10% of the
//!   GETs sent over the last second plus 10, so that retries never double a flood
//!   ([`ClientOptions::retry_overloaded`], [`Client::overload_retries`]). PUTs are never retried.
//! * Schemas are fetched once per view and cached ([`Client::schema`]); a view redefined on the
//!   server is noticed (`SCHEMA_MISMATCH`), refetched and the call retried once.
//! * [`Batch`] reads statuses, ages and rows in place from the received frame. Rows form one
//!   contiguous, 8-byte-aligned block, so an all-`f32` view is a `&[f32]` matrix without a copy
//!   ([`Batch::as_f32_matrix`]).
//! * A call the proxy's access file does not grant the token's principal (GET or SCHEMA of a view
//!   it may not read, PUT to a view it may not write) fails with [`Error::Server`] whose
//!   [`Error::code`] is [`ErrorCode::Forbidden`]; the connection stays open for the calls it may
//!   make.
//! * TLS, with a client certificate if the proxy asks for one, is one option away
//!   ([`ClientOptions::tls`], [`TlsOptions`]). A certificate problem fails [`Client::connect`]
//!   with an [`Error::Tls`] that says what is wrong: an untrusted, expired or misnamed proxy
//!   certificate, or a client certificate the proxy refused or did not get.
//! * Mistakes are caught before sending where possible (bad keys, rows of the wrong type, batches
//!   above the server's `max_batch` or `max_frame`), so they cost neither a round trip nor the
//!   connection.
//!
//! ```no_run
//! use featureproxy_client::{Client, ClientOptions, Value};
//!
//! # async fn run() -> Result<(), featureproxy_client::Error> {
//! let client = Client::connect("127.0.0.1:7000", ClientOptions::default()).await?;
//!
//! // Write a row: key, computed_at, one value per feature in schema order.
//! let now = std::time::SystemTime::now();
//! client.put("user", &[("u1", now, [Value::F32(0.25), Value::F32(3.0)])]).await?;
//!
//! // Read a batch.
//! let batch = client.get("user", &["u1", "u2"]).await?;
//! for i in 0..batch.len() {
//!     println!("{:?} {:?} {:?}", batch.status(i), batch.age(i), batch.row(i));
//! }
//! if let Some(m) = batch.as_f32_matrix() {
//!     // m is batch.len() x k, row-major, borrowed from the received frame.
//!     let k = batch.schema().len();
//!     assert_eq!(m.len(), batch.len() * k);
//! }
//! # Ok(()) }
//! ```

mod batch;
mod client;
mod conn;
mod error;
mod overload;
mod schema;
mod tls;
mod value;

#[cfg(test)]
mod mock_tests;
#[cfg(test)]
mod tls_tests;

pub use batch::Batch;
pub use client::{Client, ClientOptions, GetOptions, UnixMillis};
pub use error::{Error, TlsError, TlsFailure};
pub use overload::{RETRY_BUDGET_GETS_PER_RETRY, RETRY_BUDGET_MIN_RETRIES, RETRY_BUDGET_WINDOW};
pub use schema::{Feature, Schema};
pub use tls::{TlsConnector, TlsOptions, ALPN_PROTOCOL};
pub use value::Value;

/// The rustls this client is built with (0.23, aws-lc-rs provider), for a configuration of one's
/// own ([`TlsOptions::from_config`]) of the same version.
pub use rustls;

/// The protocol crate, for types beyond those re-exported here.
pub use featureproxy_protocol as protocol;
pub use featureproxy_protocol::{
    Dtype, EntityStatus, ErrorCode, FeatureSpec, HelloReply, ProtocolError, PutEntry, SchemaReply,
    Status,
};

/// The size of a call's future: every caller stores it, and a blocking one (`block_on`) may move
/// it; rare steps (connecting, fetching a schema, the overload retry) are boxed to keep it small.
#[cfg(test)]
mod future_size {
    /// The size of what `make` returns, without calling it (no client needed).
    fn returned<A, R>(_: &impl Fn(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn a_call_s_future_stays_small() {
        let get = |c: crate::Client| async move { c.get("v", &[b"k".as_slice()]).await };
        let ping = |c: crate::Client| async move { c.ping().await };
        let schema = |c: crate::Client| async move { c.schema("v").await };
        // 4.9, 5.1 and 5.5 KB while connecting was inline; 2.3, 1.3 and 0.4 KB boxed (rustc 1.95).
        for (what, size) in [
            ("get", returned(&get)),
            ("ping", returned(&ping)),
            ("schema", returned(&schema)),
        ] {
            assert!(size < 3 * 1024, "{what}'s future is {size} bytes");
        }
    }
}
