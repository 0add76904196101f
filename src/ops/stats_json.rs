//! `/stats`: the shards' counters and latency and age percentiles as JSON, per shard and
//! merged, over the last one-second interval and since start.

use std::sync::atomic::Ordering::Relaxed;

use featureproxy_protocol::Status;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::Sources;
use crate::config::registry::Registry;
use crate::store::breaker::BreakerState;
use crate::telemetry::counters::{ShardStats, OPS};
use crate::telemetry::histograms::ShardHistograms;

/// p50, p90, p99, p99.9 and max of a histogram, in its unit scaled by `scale`.
fn sum(shards: &[std::sync::Arc<ShardStats>], f: impl Fn(&ShardStats) -> u64) -> u64 {
    shards.iter().map(|s| f(s)).sum()
}

fn percentiles(h: &Histogram<u64>, scale: f64) -> Value {
    let q = |q: f64| h.value_at_quantile(q) as f64 * scale;
    json!({
        "count": h.len(),
        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
        "max": h.max() as f64 * scale,
    })
}

fn histograms_json(h: &ShardHistograms, registry: &Registry) -> Value {
    let mut views = serde_json::Map::new();
    for view in registry.views() {
        let i = view.id as usize - 1;
        views.insert(
            view.name.clone(),
            json!({
                "get_ms": percentiles(&h.get_us[i], 1e-3),
                "put_ms": percentiles(&h.put_us[i], 1e-3),
                "age_s": percentiles(&h.age_ms[i], 1e-3),
            }),
        );
    }
    json!({ "views": views, "redis_ms": percentiles(&h.redis_us, 1e-3) })
}

fn shard_json(s: &ShardStats, registry: &Registry) -> Value {
    let mut views = serde_json::Map::new();
    for view in registry.views() {
        if let Some(vs) = s.view(view.id) {
            let mut statuses = serde_json::Map::new();
            for st in Status::ALL {
                statuses.insert(st.name().into(), vs.entities[st as usize].get().into());
            }
            statuses.insert("cached".into(), vs.cached.get().into());
            views.insert(view.name.clone(), Value::Object(statuses));
        }
    }
    let ops: serde_json::Map<String, Value> = OPS
        .iter()
        .map(|&op| {
            (
                op.name().to_lowercase(),
                json!({"ok": s.requests_ok.of(op).get(), "error": s.requests_failed.of(op).get()}),
            )
        })
        .collect();
    let breaker = BreakerState::from_gauge(s.breaker_state.load(Relaxed)).name();
    let nodes: Vec<Value> = s
        .node_list()
        .iter()
        .map(|n| {
            json!({
                "node": n.addr,
                "role": if n.replica.load(Relaxed) { "replica" } else { "primary" },
                "connected": n.connected.load(Relaxed),
                "breaker_state": BreakerState::from_gauge(n.breaker_state.load(Relaxed)).name(),
                "keys": n.keys.get(),
                "errors": n.errors.get(),
            })
        })
        .collect();
    json!({
        "cluster_nodes": nodes,
        "shard": s.shard,
        "redis_connected": s.redis_up(),
        "breaker_state": breaker,
        "requests": ops,
        "entities": views,
        "entities_requested": s.entities_requested.get(),
        "redis_commands": s.redis_commands.get(),
        "redis_keys": s.redis_keys.get(),
        "singleflight_joins": s.singleflight_joins.get(),
        "connections_open": s.connections_open.get(),
        "inflight_requests": s.inflight_requests.get(),
        "cache": {
            "bytes": s.cache.bytes.load(Relaxed),
            "entries": s.cache.entries.load(Relaxed),
            "capacity_bytes": s.cache.capacity.load(Relaxed),
            "evictions": s.cache.evictions.load(Relaxed),
            "invalidations": s.cache.invalidations.load(Relaxed),
        },
    })
}

/// Per shard and merged: counters, and latency/age percentiles over the last one-second interval
/// and since start.
pub fn stats(src: &Sources) -> Value {
    let (total, last) = src.merged_histograms();
    let mut shards = Vec::new();
    if let Ok(agg) = src.histograms.lock() {
        for s in &src.shards {
            let i = s.shard as usize;
            let mut v = shard_json(s, &src.registry);
            if let (Some(l), Some(t)) = (agg.last.get(i), agg.total.get(i)) {
                v["last_interval"] = histograms_json(l, &src.registry);
                v["since_start"] = histograms_json(t, &src.registry);
            }
            shards.push(v);
        }
    }
    json!({
        "merged": {
            "requests_ok": sum(&src.shards, |s| s.requests_ok.total()),
            "requests_failed": sum(&src.shards, |s| s.requests_failed.total()),
            "entities_requested": sum(&src.shards, |s| s.entities_requested.get()),
            "redis_commands": sum(&src.shards, |s| s.redis_commands.get()),
            "connections_open": sum(&src.shards, |s| s.connections_open.get()),
            "last_interval": histograms_json(&last, &src.registry),
            "since_start": histograms_json(&total, &src.registry),
        },
        "shards": shards,
    })
}
