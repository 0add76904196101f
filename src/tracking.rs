//! Redis client-side caching (RESP3 `CLIENT TRACKING ... BCAST PREFIX fp:`): Redis tells each
//! shard about every write to a feature key, whoever made it, and the shard drops the key from its
//! hot cache and from its reads in flight at once. Without it, a row written behind the proxy's
//! back would be served from the cache until the view's hot-cache TTL; with it, the TTL is only
//! the backstop.
//!
//! Tracking is per connection and lost when it drops: on every reconnect the shard flushes its
//! cache (writes may have been missed meanwhile) and arms tracking again. A null invalidation
//! (FLUSHALL) and a lagging receiver also flush everything.

use std::rc::Rc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::RespVersion;
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, info, warn};

use crate::handler::ShardCtx;

/// Every key the proxy serves starts with this.
const PREFIX: &str = "fp:";

/// Runs the shard's tracking connection until the shard stops.
pub async fn run(url: String, ctx: Rc<ShardCtx>) {
    let shard = ctx.shard;
    let client = match build(&url) {
        Ok(c) => c,
        Err(e) => {
            warn!(shard, error = %e, "Redis client-side caching unavailable: writes behind the proxy show after the hot-cache TTL");
            return;
        }
    };
    let mut invalidations = client.invalidation_rx();
    let mut reconnects = client.reconnect_rx();
    // fred announces every connection, the first one included, on the reconnect channel: tracking
    // is armed from there, once per connection.
    client.connect();
    loop {
        tokio::select! {
            msg = invalidations.recv() => match msg {
                Ok(inv) if inv.keys.is_empty() => ctx.flush_cache("Redis was flushed"),
                Ok(inv) => {
                    let keys: Vec<bytes::Bytes> = inv.keys.into_iter().map(|k| k.into_bytes()).collect();
                    ctx.invalidate_local(&keys);
                }
                Err(RecvError::Lagged(n)) => {
                    ctx.flush_cache("missed invalidations");
                    debug!(shard, missed = n, "invalidation receiver lagged");
                }
                Err(RecvError::Closed) => return,
            },
            r = reconnects.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    ctx.flush_cache("tracking connection re-established");
                    arm(&client, &ctx).await;
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

fn build(url: &str) -> Result<Client, fred::error::Error> {
    let mut config = Config::from_url(url)?;
    config.version = RespVersion::RESP3;
    Builder::from_config(config)
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::from_secs(1);
            // Room for bursts of invalidations before the receiver counts as lagging.
            p.broadcast_channel_capacity = 4096;
        })
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_millis(500);
            c.tcp = TcpConfig {
                nodelay: Some(true),
                ..Default::default()
            };
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
        .build()
}

async fn arm(client: &Client, ctx: &ShardCtx) {
    match client
        .start_tracking(PREFIX, true, false, false, false)
        .await
    {
        Ok(()) => {
            ctx.stats
                .tracking_armed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            info!(
                shard = ctx.shard,
                "Redis client-side caching on: writes to fp:* invalidate the hot cache at once"
            );
        }
        Err(e) => {
            ctx.stats
                .tracking_armed
                .store(false, std::sync::atomic::Ordering::Relaxed);
            warn!(shard = ctx.shard, error = %e, "could not turn on Redis client tracking; the hot-cache TTL bounds staleness");
        }
    }
}
