//! Redis client-side caching (RESP3 `CLIENT TRACKING ... BCAST PREFIX`): Redis tells each shard
//! about every write to a feature key, whoever made it, and the shard drops the row from its hot
//! cache and from its reads in flight at once. Without it, a row written behind the proxy's back
//! would be served from the cache until the view's hot-cache TTL; with it, the TTL is only the
//! backstop.
//!
//! Tracking is per connection and lost when it drops: on every reconnect everything counts as
//! changed (writes may have been missed meanwhile) and tracking is armed again. A null
//! invalidation (FLUSHALL) and a lagging receiver also mean everything changed.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::RespVersion;
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, info, warn};

use super::tls::RedisTls;
use crate::store::Change;
use crate::telemetry::counters::ShardStats;

/// Runs the shard's tracking connection until the shard stops, telling `changed` about every
/// write Redis reports under `prefixes` (the views' layouts give them).
pub async fn run(
    url: String,
    tls: Option<Arc<RedisTls>>,
    prefixes: Vec<String>,
    stats: Arc<ShardStats>,
    armed: Armed,
    mut changed: impl FnMut(Change),
) {
    let shard = stats.shard;
    let client = match build(&url, tls.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            warn!(shard, error = %e, "Redis client-side caching unavailable: writes behind the proxy show after the hot-cache TTL");
            return;
        }
    };
    let prefixes = covering(prefixes);
    let mut invalidations = client.invalidation_rx();
    let mut reconnects = client.reconnect_rx();
    // fred announces every connection, the first one included, on the reconnect channel: tracking
    // is armed from there, once per connection.
    client.connect();
    loop {
        tokio::select! {
            msg = invalidations.recv() => match msg {
                Ok(inv) if inv.keys.is_empty() => changed(Change::Everything { why: "Redis was flushed" }),
                Ok(inv) => changed(Change::Keys(inv.keys.into_iter().map(|k| k.into_bytes()).collect())),
                Err(RecvError::Lagged(n)) => {
                    changed(Change::Everything { why: "missed invalidations" });
                    debug!(shard, missed = n, "invalidation receiver lagged");
                }
                Err(RecvError::Closed) => return,
            },
            r = reconnects.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    changed(Change::Everything { why: "tracking connection re-established" });
                    arm(&client, &prefixes, stats.shard, &armed, &stats).await;
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// The prefixes to arm: each once, and none that another one already covers (Redis refuses a
/// prefix that overlaps another, and that would leave tracking off for every view).
fn covering(mut prefixes: Vec<String>) -> Vec<String> {
    prefixes.sort_unstable();
    prefixes.dedup();
    let mut out: Vec<String> = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        // Sorted, so a prefix that covers `p` sorts before it, though not always just before.
        if !out.iter().any(|q| p.starts_with(q.as_str())) {
            out.push(p);
        }
    }
    out
}

fn build(url: &str, tls: Option<&RedisTls>) -> Result<Client, fred::error::Error> {
    let mut config = super::tls::fred_config(url, tls)
        .map_err(|e| fred::error::Error::new(fred::error::ErrorKind::Config, e.to_string()))?;
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

/// Where a tracking connection reports whether it is armed: the shard's own flag (standalone),
/// or one node's (a cluster sets the shard's flag from all of them).
pub enum Armed {
    Shard,
    Node(Rc<Cell<bool>>),
}

async fn arm(client: &Client, prefixes: &[String], shard: u16, armed: &Armed, stats: &ShardStats) {
    let report = |on: bool| match armed {
        Armed::Shard => stats.tracking_armed.store(on, Relaxed),
        Armed::Node(flag) => flag.set(on),
    };
    match client
        .start_tracking(prefixes.to_vec(), true, false, false, false)
        .await
    {
        Ok(()) => {
            report(true);
            info!(
                shard,
                prefixes = ?prefixes,
                "Redis client-side caching on: writes under these prefixes invalidate the hot cache at once"
            );
        }
        Err(e) => {
            report(false);
            warn!(shard, error = %e, "could not turn on Redis client tracking; the hot-cache TTL bounds staleness");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_prefix_is_armed_once_and_covered_ones_are_left_out() {
        let got = super::covering(
            ["fp:", "\u{1}ab", "fp:", "\u{1}a", "\u{2}x"]
                .map(String::from)
                .to_vec(),
        );
        assert_eq!(got, ["\u{1}a", "\u{2}x", "fp:"]);
    }
}
