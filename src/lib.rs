//! featureproxy: a thread-per-core proxy that serves ML feature vectors from Redis.
//!
//! The folders are the stages of the data path. A GET walks them once each way:
//! - [`serving`]: connections, the handshake, dispatch, GET and PUT;
//! - [`reading`]: hot cache, coalesced single-flight reads, freshness, coherence; it sees the
//!   store only through its seam;
//! - [`store`]: the seam (`Layout`, `Backend`), our packed layout, and Redis beneath it;
//!
//! and back up with one status, age and row per entity. Beside the path: [`config`] (the config
//! file, read once), [`telemetry`] (counters and histograms) and [`ops`] (the operators' HTTP
//! endpoint and the metric table). [`shard`] wires one thread's worth of the stages together and
//! [`server`] starts the shards.

pub mod config;
pub mod ops;
pub mod reading;
pub mod reload;
pub mod server;
pub mod serving;
pub mod shard;
pub mod store;
pub mod telemetry;
pub mod transport;
