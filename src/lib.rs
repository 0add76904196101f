//! featureproxy: a thread-per-core proxy that serves ML feature vectors from Redis.
//!
//! The data path, top to bottom: [`socket`] reads frames and writes replies; the protocol crate
//! decodes them; [`handler`] runs each request against the [`registry`]; GETs go through the
//! shard's [`coalescer`] (batched, single-flight MGETs), PUTs straight to [`guarded`], which puts
//! the [`backend`] (Redis) behind the shard's [`breaker`]; [`store`] knows the layout of values in
//! Redis and the freshness rules; [`stats`] counts, and [`stats_http`] shows the counts.
//! [`shard`] wires one thread's worth of these together and [`server`] starts the shards.

pub mod backend;
pub mod breaker;
pub mod cache;
pub mod coalescer;
pub mod config;
pub mod guarded;
pub mod handler;
pub mod histograms;
pub mod invalidation;
pub mod prom;
pub mod redis_child;
pub mod registry;
pub mod server;
pub mod shard;
pub mod socket;
pub mod stats;
pub mod stats_http;
pub mod store;
pub mod tracking;
