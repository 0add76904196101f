//! `/stats`: the shards' counters and latency and age percentiles as JSON, per shard and
//! merged, over the last one-second interval and since start.

use std::sync::atomic::Ordering::Relaxed;

use featureproxy_protocol::{ErrorCode, Status};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::history::{thousandths, Sample};
use super::Sources;
use crate::config::registry::Registry;
use crate::store::breaker::BreakerState;
use crate::telemetry::counters::{ShardStats, OPS};
use crate::telemetry::histograms::ShardHistograms;

fn sum(shards: &[std::sync::Arc<ShardStats>], f: impl Fn(&ShardStats) -> u64) -> u64 {
    shards.iter().map(|s| f(s)).sum()
}

/// p50, p90, p99, p99.9 and max of a histogram, in thousands of its unit (µs as ms, ms as s).
fn percentiles(h: &Histogram<u64>) -> Value {
    let q = |q: f64| thousandths(h.value_at_quantile(q));
    json!({
        "count": h.len(),
        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
        "max": thousandths(h.max()),
    })
}

fn histograms_json(h: &ShardHistograms, registry: &Registry) -> Value {
    let mut views = serde_json::Map::new();
    for view in registry.views() {
        let i = view.id as usize - 1;
        // A view a reload added after the histograms were read shows from the next answer.
        let (Some(get), Some(put), Some(age)) = (h.get_us.get(i), h.put_us.get(i), h.age_ms.get(i))
        else {
            continue;
        };
        views.insert(
            view.name.clone(),
            json!({
                "get_ms": percentiles(get),
                "put_ms": percentiles(put),
                "age_s": percentiles(age),
            }),
        );
    }
    json!({ "views": views, "redis_ms": percentiles(&h.redis_us) })
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
        "tracking_armed": s.tracking_armed.load(Relaxed),
        "requests_shed": s.requests_shed.get(),
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
/// and since start. Beside them, for the status page: the time, uptime, version and
/// configuration generation, and per view its thresholds and a [`Sample`] (GET/s, p50, p99, age
/// over the last interval; statuses and cache lookups since start, merged over shards).
pub fn stats(src: &Sources) -> Value {
    let registry = src.registry();
    let (total, last) = src.merged_histograms();
    let sample = Sample::read(src, &last);
    let mut shards = Vec::new();
    if let Ok(agg) = src.histograms.lock() {
        for s in &src.shards {
            let i = s.shard as usize;
            let mut v = shard_json(s, &registry);
            if let (Some(l), Some(t)) = (agg.last.get(i), agg.total.get(i)) {
                v["last_interval"] = histograms_json(l, &registry);
                v["since_start"] = histograms_json(t, &registry);
            }
            shards.push(v);
        }
    }
    // ERROR frames by code, as featureproxy_errors_total has them.
    let errors: serde_json::Map<String, Value> = ErrorCode::ALL
        .iter()
        .map(|&c| {
            (
                c.name().to_lowercase(),
                sum(&src.shards, |s| s.errors(c).get()).into(),
            )
        })
        .collect();
    let mut merged = sample.merged_json();
    let more = json!({
        "entities_requested": sum(&src.shards, |s| s.entities_requested.get()),
        "redis_commands": sum(&src.shards, |s| s.redis_commands.get()),
        "connections_open": sum(&src.shards, |s| s.connections_open.get()),
        "connections_refused": sum(&src.shards, |s| s.connections_refused.get()),
        "errors": errors,
        "redis_errors": {
            "timeout": sum(&src.shards, |s| s.redis_timeouts.get()),
            "unavailable": sum(&src.shards, |s| s.redis_unavailable.get()),
        },
        "last_interval": histograms_json(&last, &registry),
        "since_start": histograms_json(&total, &registry),
    });
    if let Value::Object(more) = more {
        merged.extend(more);
    }
    // Per view: its thresholds beside the sample's figures.
    let views = sample.views_json(&registry, |m, id| {
        if let Some(v) = registry.by_id(id) {
            let secs = |d: std::time::Duration| Value::from(d.as_secs_f64());
            m.insert("stale_after_s".into(), secs(v.stale_after));
            m.insert("max_staleness_s".into(), secs(v.max_staleness));
            m.insert("hot_cache_ttl_s".into(), secs(v.hot_cache_ttl));
        }
    });
    let r = &src.reloads;
    let config = json!({
        "generation": r.generation.get(),
        "last_reload_ok": r.last_ok.load(Relaxed),
        "last_reload_unix_ms": r.last_unix_ms.get(),
        "last_reload_error": r.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
        "reloads_applied": r.applied.get(),
        "reloads_refused": r.refused.get(),
    });
    json!({
        "now_ms": sample.now_ms,
        "uptime_s": (sample.now_ms / 1000).saturating_sub(src.started_unix_s),
        "version": env!("CARGO_PKG_VERSION"),
        "config": config,
        "views": views,
        "values": serde_json::to_value(&src.value_reports().views).unwrap_or_default(),
        "merged": merged,
        "shards": shards,
    })
}
