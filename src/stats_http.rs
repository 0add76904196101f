//! The operators' endpoint: `/metrics` (Prometheus text), `/stats` (JSON), `/health`, `/ready`.
//!
//! Runs on threads of its own with blocking sockets, off the request path. It reads the shards'
//! relaxed atomic counters and the histogram aggregate (whose lock no shard ever takes) and adds
//! them up per scrape.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use featureproxy_protocol::{ErrorCode, Status};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::histograms::{ShardHistograms, SharedAggregate};
use crate::prom::Prom;
use crate::registry::Registry;
use crate::stats::{CloseReason, ShardStats, OPS};

/// Everything the endpoint reads.
pub struct Sources {
    pub shards: Vec<Arc<ShardStats>>,
    pub registry: Arc<Registry>,
    pub histograms: SharedAggregate,
    /// Unix seconds when the process started.
    pub started_unix_s: u64,
}

/// At most this many scrapes are answered at once; more are closed at once.
const MAX_CONCURRENT: usize = 16;

/// Binds the endpoint and serves it on threads of its own; returns the bound address.
pub fn start(addr: SocketAddr, sources: Sources) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let sources = Arc::new(sources);
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("stats".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // One thread per scrape, so a slow or idle client cannot hold up the others.
                if busy.fetch_add(1, Relaxed) >= MAX_CONCURRENT {
                    busy.fetch_sub(1, Relaxed);
                    continue;
                }
                let (sources, busy) = (sources.clone(), busy.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("stats-conn".into())
                        .spawn(move || {
                            let _ = answer(stream, &sources);
                            busy.fetch_sub(1, Relaxed);
                        });
                if spawned.is_err() {
                    // The closure (and its guard) was dropped without running.
                    continue;
                }
            }
        })?;
    Ok(bound)
}

fn answer(mut stream: TcpStream, src: &Sources) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while n < buf.len() {
        let r = stream.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, ctype, body) = match path {
        "/metrics" => (200, "text/plain; version=0.0.4", metrics(src)),
        "/stats" => (200, "application/json", stats_json(src).to_string() + "\n"),
        "/health" => health(&src.shards),
        "/ready" => ready(&src.shards),
        _ => (
            404,
            "text/plain",
            "not found: try /metrics, /stats, /health or /ready\n".to_string(),
        ),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes())
}

fn ready(shards: &[Arc<ShardStats>]) -> (u16, &'static str, String) {
    if shards.iter().any(|s| s.redis_connected.load(Relaxed)) {
        (200, "application/json", "{\"ready\":true}\n".into())
    } else {
        let body = "{\"ready\":false,\"reason\":\"Redis has not answered yet\"}\n";
        (503, "application/json", body.into())
    }
}

fn health(shards: &[Arc<ShardStats>]) -> (u16, &'static str, String) {
    let open: Vec<u16> = shards
        .iter()
        .filter(|s| s.breaker_state.load(Relaxed) == 1)
        .map(|s| s.shard)
        .collect();
    let disconnected: Vec<u16> = shards
        .iter()
        .filter(|s| !s.redis_connected.load(Relaxed))
        .map(|s| s.shard)
        .collect();
    if open.is_empty() && disconnected.is_empty() {
        return (200, "application/json", "{\"status\":\"ok\"}\n".into());
    }
    let mut reasons = Vec::new();
    if !disconnected.is_empty() {
        reasons.push(format!("Redis unreachable from shards {disconnected:?}"));
    }
    if !open.is_empty() {
        reasons.push(format!("circuit breaker open on shards {open:?}"));
    }
    let body = json!({
        "status": "degraded",
        "reason": reasons.join("; "),
        "breakers_open": open,
        "redis_disconnected": disconnected,
    });
    (503, "application/json", body.to_string() + "\n")
}

/// Sub-millisecond buckets for request and Redis latency, in seconds.
const LATENCY_BOUNDS: [f64; 13] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0,
];
/// Feature age buckets, in seconds: from a second to a day.
const AGE_BOUNDS: [f64; 12] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

fn sum(shards: &[Arc<ShardStats>], f: impl Fn(&ShardStats) -> u64) -> u64 {
    shards.iter().map(|s| f(s)).sum()
}

/// Histograms summed over shards: (since start, last interval).
fn merged(src: &Sources) -> (ShardHistograms, ShardHistograms) {
    let n = src.registry.views().len();
    let (mut total, mut last) = (ShardHistograms::new(n), ShardHistograms::new(n));
    if let Ok(agg) = src.histograms.lock() {
        for h in &agg.total {
            total.add(h);
        }
        for h in &agg.last {
            last.add(h);
        }
    }
    (total, last)
}

fn metrics(src: &Sources) -> String {
    let shards = &src.shards;
    let mut p = Prom::default();

    p.family(
        "featureproxy_requests_total",
        "counter",
        "Requests answered, by op and outcome (ok, or error: an ERROR frame).",
    );
    for (i, op) in OPS.iter().enumerate() {
        let op = op.name().to_lowercase();
        p.sample(
            "featureproxy_requests_total",
            &[("op", &op), ("outcome", "ok")],
            sum(shards, |s| s.requests_ok[i].get()),
        );
        p.sample(
            "featureproxy_requests_total",
            &[("op", &op), ("outcome", "error")],
            sum(shards, |s| s.requests_failed[i].get()),
        );
    }
    p.family(
        "featureproxy_errors_total",
        "counter",
        "ERROR frames sent, by code (protocol errors included).",
    );
    for code in ErrorCode::ALL {
        let v = sum(shards, |s| s.requests_err[code as usize - 1].get());
        p.sample(
            "featureproxy_errors_total",
            &[("code", &code.name().to_lowercase())],
            v,
        );
    }
    p.family(
        "featureproxy_entities_total",
        "counter",
        "Entities served by GET, by view and status.",
    );
    for view in src.registry.views() {
        for st in Status::ALL {
            let v = sum(shards, |s| {
                s.view(view.id)
                    .map_or(0, |vs| vs.entities[st as usize].get())
            });
            p.sample(
                "featureproxy_entities_total",
                &[("view", &view.name), ("status", st.name())],
                v,
            );
        }
    }
    type ViewRead = fn(&crate::stats::ViewStats) -> u64;
    let per_view: [(&str, &str, ViewRead); 3] = [
        (
            "featureproxy_entities_cached_total",
            "Entities served from the hot cache (status bit 0x80).",
            |v| v.cached.get(),
        ),
        (
            "featureproxy_cache_hits_total",
            "Hot-cache lookups that found the entity.",
            |v| v.cache_hits.get(),
        ),
        (
            "featureproxy_cache_misses_total",
            "Hot-cache lookups that did not.",
            |v| v.cache_misses.get(),
        ),
    ];
    for (name, help, f) in per_view {
        p.family(name, "counter", help);
        for view in src.registry.views() {
            p.sample(
                name,
                &[("view", &view.name)],
                sum(shards, |s| s.view(view.id).map_or(0, f)),
            );
        }
    }
    type CacheRead = fn(&crate::stats::CacheGauges) -> &std::sync::atomic::AtomicU64;
    let cache: [(&str, &str, &str, CacheRead); 8] = [
        ("featureproxy_cache_admissions_total", "counter", "Entries admitted to the hot cache.", |c| &c.admissions),
        ("featureproxy_cache_rejections_total", "counter", "Entries dropped from the probation FIFO without a second read (one-hit wonders, scans).", |c| &c.rejections),
        ("featureproxy_cache_evictions_total", "counter", "Entries evicted from the main FIFO to make room.", |c| &c.evictions),
        ("featureproxy_cache_expirations_total", "counter", "Entries dropped at their hot-cache TTL.", |c| &c.expirations),
        ("featureproxy_cache_invalidations_total", "counter", "Entries dropped because a PUT wrote the key.", |c| &c.invalidations),
        ("featureproxy_cache_bytes", "gauge", "Bytes charged to the hot cache (keys, rows, per-entry overhead).", |c| &c.bytes),
        ("featureproxy_cache_entries", "gauge", "Entries in the hot cache.", |c| &c.entries),
        ("featureproxy_cache_capacity_bytes", "gauge", "The hot cache's byte bound.", |c| &c.capacity),
    ];
    for (name, kind, help, f) in cache {
        p.family(name, kind, help);
        for s in shards {
            p.sample(
                name,
                &[("shard", &s.shard.to_string())],
                f(&s.cache).load(Relaxed),
            );
        }
    }
    type Read = fn(&ShardStats) -> u64;
    let counters: [(&str, &str, Read); 10] = [
        (
            "featureproxy_client_gets_total",
            "GET requests received (coalescing input).",
            |s| s.requests_ok[3].get() + s.requests_failed[3].get(),
        ),
        (
            "featureproxy_entities_requested_total",
            "Entities asked for in GETs.",
            |s| s.entities_requested.get(),
        ),
        (
            "featureproxy_redis_commands_total",
            "Commands sent to Redis (one MGET per coalesced batch, one SET per written row).",
            |s| s.redis_commands.get(),
        ),
        (
            "featureproxy_redis_keys_total",
            "Keys carried by Redis commands; divided by commands, the keys per command.",
            |s| s.redis_keys.get(),
        ),
        (
            "featureproxy_singleflight_joins_total",
            "Entity reads that joined a Redis read already in flight.",
            |s| s.singleflight_joins.get(),
        ),
        (
            "featureproxy_breaker_transitions_total",
            "Circuit breaker state changes.",
            |s| s.breaker_transitions.get(),
        ),
        (
            "featureproxy_connections_accepted_total",
            "Client connections accepted.",
            |s| s.connections_accepted.get(),
        ),
        (
            "featureproxy_connections_refused_total",
            "Client connections refused at max_connections_per_shard (OVERLOADED).",
            |s| s.connections_refused.get(),
        ),
        (
            "featureproxy_bytes_in_total",
            "Bytes read from clients.",
            |s| s.bytes_in.get(),
        ),
        (
            "featureproxy_bytes_out_total",
            "Bytes written to clients.",
            |s| s.bytes_out.get(),
        ),
    ];
    for (name, help, f) in counters {
        p.family(name, "counter", help);
        p.sample(name, &[], sum(shards, f));
    }
    p.family(
        "featureproxy_redis_errors_total",
        "counter",
        "Redis commands that failed, by kind (timeout; unavailable: connection down).",
    );
    p.sample(
        "featureproxy_redis_errors_total",
        &[("kind", "timeout")],
        sum(shards, |s| s.redis_timeouts.get()),
    );
    p.sample(
        "featureproxy_redis_errors_total",
        &[("kind", "unavailable")],
        sum(shards, |s| s.redis_unavailable.get()),
    );
    p.family(
        "featureproxy_breaker_rejections_total",
        "counter",
        "Redis calls not made because the shard's breaker was open (reads got DEGRADED defaults).",
    );
    p.sample(
        "featureproxy_breaker_rejections_total",
        &[],
        sum(shards, |s| s.breaker_rejections.get()),
    );
    p.family(
        "featureproxy_view_stale_after_seconds",
        "gauge",
        "Each view's stale_after: older values are served as STALE.",
    );
    for v in src.registry.views() {
        p.sample(
            "featureproxy_view_stale_after_seconds",
            &[("view", &v.name)],
            v.stale_after.as_secs_f64(),
        );
    }
    p.family(
        "featureproxy_view_max_staleness_seconds",
        "gauge",
        "Each view's max_staleness: older values are withheld (EXPIRED defaults).",
    );
    for v in src.registry.views() {
        p.sample(
            "featureproxy_view_max_staleness_seconds",
            &[("view", &v.name)],
            v.max_staleness.as_secs_f64(),
        );
    }
    p.family(
        "featureproxy_build_info",
        "gauge",
        "Always 1; the version label says which build runs.",
    );
    p.sample(
        "featureproxy_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    p.family(
        "featureproxy_start_time_seconds",
        "gauge",
        "Unix time the process started, to spot restarts.",
    );
    p.sample("featureproxy_start_time_seconds", &[], src.started_unix_s);
    p.family(
        "featureproxy_connections_closed_total",
        "counter",
        "Client connections closed, by reason.",
    );
    for r in CloseReason::ALL {
        p.sample(
            "featureproxy_connections_closed_total",
            &[("reason", r.name())],
            sum(shards, |s| s.connections_closed[r as usize].get()),
        );
    }
    p.family(
        "featureproxy_connections_open",
        "gauge",
        "Client connections open now.",
    );
    p.sample(
        "featureproxy_connections_open",
        &[],
        sum(shards, |s| s.connections_open.get()),
    );
    p.family(
        "featureproxy_inflight_requests",
        "gauge",
        "GET and PUT requests in flight now.",
    );
    p.sample(
        "featureproxy_inflight_requests",
        &[],
        sum(shards, |s| s.inflight_requests.get()),
    );
    p.family(
        "featureproxy_breaker_state",
        "gauge",
        "Circuit breaker state per shard: 0 closed, 1 open, 2 half-open.",
    );
    for s in shards {
        p.sample(
            "featureproxy_breaker_state",
            &[("shard", &s.shard.to_string())],
            s.breaker_state.load(Relaxed),
        );
    }
    p.family("featureproxy_cache_tracking", "gauge", "1 while Redis client tracking keeps the shard's hot cache coherent with writes made behind the proxy.");
    for s in shards {
        p.sample(
            "featureproxy_cache_tracking",
            &[("shard", &s.shard.to_string())],
            s.tracking_armed.load(Relaxed) as u8,
        );
    }
    p.family(
        "featureproxy_redis_connected",
        "gauge",
        "1 while the shard's Redis connection is up.",
    );
    for s in shards {
        p.sample(
            "featureproxy_redis_connected",
            &[("shard", &s.shard.to_string())],
            s.redis_connected.load(Relaxed) as u8,
        );
    }

    let (total, last) = merged(src);
    p.family(
        "featureproxy_request_duration_seconds",
        "histogram",
        "Server-side latency, from a request read to its reply queued, by op and view.",
    );
    for view in src.registry.views() {
        let i = view.id as usize - 1;
        p.histogram(
            "featureproxy_request_duration_seconds",
            &[("op", "get"), ("view", &view.name)],
            &total.get_us[i],
            1e-6,
            &LATENCY_BOUNDS,
        );
        p.histogram(
            "featureproxy_request_duration_seconds",
            &[("op", "put"), ("view", &view.name)],
            &total.put_us[i],
            1e-6,
            &LATENCY_BOUNDS,
        );
    }
    p.family(
        "featureproxy_feature_age_seconds",
        "histogram",
        "Age (now - computed_at) of every stored value found, by view.",
    );
    for view in src.registry.views() {
        p.histogram(
            "featureproxy_feature_age_seconds",
            &[("view", &view.name)],
            &total.age_ms[view.id as usize - 1],
            1e-3,
            &AGE_BOUNDS,
        );
    }
    p.family(
        "featureproxy_feature_age_max_seconds",
        "gauge",
        "Oldest value served per view over the last one-second interval.",
    );
    for view in src.registry.views() {
        let h = &last.age_ms[view.id as usize - 1];
        p.sample(
            "featureproxy_feature_age_max_seconds",
            &[("view", &view.name)],
            h.max() as f64 / 1000.0,
        );
    }
    p.family(
        "featureproxy_redis_command_duration_seconds",
        "histogram",
        "Redis command latency as the proxy sees it.",
    );
    p.histogram(
        "featureproxy_redis_command_duration_seconds",
        &[],
        &total.redis_us,
        1e-6,
        &LATENCY_BOUNDS,
    );
    p.finish()
}

/// p50, p90, p99, p99.9 and max of a histogram, in its unit scaled by `scale`.
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
        .enumerate()
        .map(|(i, op)| {
            (
                op.name().to_lowercase(),
                json!({"ok": s.requests_ok[i].get(), "error": s.requests_failed[i].get()}),
            )
        })
        .collect();
    let breaker = match s.breaker_state.load(Relaxed) {
        0 => "closed",
        1 => "open",
        _ => "half_open",
    };
    json!({
        "shard": s.shard,
        "redis_connected": s.redis_connected.load(Relaxed),
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
fn stats_json(src: &Sources) -> Value {
    let (total, last) = merged(src);
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
            "requests_ok": sum(&src.shards, |s| s.requests_ok.iter().map(|c| c.get()).sum()),
            "requests_failed": sum(&src.shards, |s| s.requests_failed.iter().map(|c| c.get()).sum()),
            "entities_requested": sum(&src.shards, |s| s.entities_requested.get()),
            "redis_commands": sum(&src.shards, |s| s.redis_commands.get()),
            "connections_open": sum(&src.shards, |s| s.connections_open.get()),
            "last_interval": histograms_json(&last, &src.registry),
            "since_start": histograms_json(&total, &src.registry),
        },
        "shards": shards,
    })
}
