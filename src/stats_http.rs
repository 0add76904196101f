//! The operators' endpoint: `/metrics` (Prometheus text), `/stats` (JSON), `/health`, `/ready`.
//!
//! Runs on its own thread with blocking sockets, off the request path. It only reads the shards'
//! relaxed atomic counters and adds them up: no lock shared with a shard.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use featureproxy_protocol::{ErrorCode, Status};

use crate::registry::Registry;
use crate::stats::{ShardStats, OPS};

/// Binds the endpoint and serves it on a thread of its own; returns the bound address.
pub fn start(
    addr: SocketAddr,
    shards: Vec<Arc<ShardStats>>,
    registry: Arc<Registry>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("stats".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = answer(stream, &shards, &registry);
            }
        })?;
    Ok(bound)
}

fn answer(
    mut stream: TcpStream,
    shards: &[Arc<ShardStats>],
    registry: &Registry,
) -> std::io::Result<()> {
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
        "/metrics" => (200, "text/plain; version=0.0.4", metrics(shards, registry)),
        "/health" => health(shards),
        "/ready" => {
            let ready = shards.iter().any(|s| s.redis_connected.load(Relaxed));
            if ready {
                (200, "application/json", "{\"ready\":true}\n".to_string())
            } else {
                (
                    503,
                    "application/json",
                    "{\"ready\":false,\"reason\":\"Redis has not answered yet\"}\n".to_string(),
                )
            }
        }
        _ => (
            404,
            "text/plain",
            "not found: try /metrics, /health or /ready\n".to_string(),
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
    let body = format!(
        "{{\"status\":\"degraded\",\"reason\":\"{}\",\"breakers_open\":{open:?},\"redis_disconnected\":{disconnected:?}}}\n",
        reasons.join("; ")
    );
    (503, "application/json", body)
}

fn metrics(shards: &[Arc<ShardStats>], registry: &Registry) -> String {
    let mut out = String::with_capacity(8192);
    let sum = |f: &dyn Fn(&ShardStats) -> u64| shards.iter().map(|s| f(s)).sum::<u64>();
    let _ = writeln!(out, "# HELP featureproxy_requests_total Requests answered, by op and outcome (ok, or the error code).");
    let _ = writeln!(out, "# TYPE featureproxy_requests_total counter");
    for (i, op) in OPS.iter().enumerate() {
        let v = sum(&|s| s.requests_ok[i].get());
        let _ = writeln!(
            out,
            "featureproxy_requests_total{{op=\"{}\",outcome=\"ok\"}} {v}",
            op.name().to_lowercase()
        );
    }
    let _ = writeln!(
        out,
        "# HELP featureproxy_errors_total ERROR frames sent, by code."
    );
    let _ = writeln!(out, "# TYPE featureproxy_errors_total counter");
    for code in ErrorCode::ALL {
        let v = sum(&|s| s.requests_err[code as usize - 1].get());
        let _ = writeln!(
            out,
            "featureproxy_errors_total{{code=\"{}\"}} {v}",
            code.name().to_lowercase()
        );
    }
    let _ = writeln!(
        out,
        "# HELP featureproxy_entities_total Entities served, by view and status."
    );
    let _ = writeln!(out, "# TYPE featureproxy_entities_total counter");
    for view in registry.views() {
        for st in Status::ALL {
            let v = sum(&|s| {
                s.view(view.id)
                    .map_or(0, |vs| vs.entities[st as usize].get())
            });
            let _ = writeln!(
                out,
                "featureproxy_entities_total{{view=\"{}\",status=\"{}\"}} {v}",
                view.name,
                st.name()
            );
        }
    }
    type ViewRead = fn(&crate::stats::ViewStats) -> u64;
    let per_view: [(&str, &str, ViewRead); 3] = [
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
        (
            "featureproxy_entities_cached_total",
            "Entities served from the hot cache (status bit 0x80).",
            |v| v.cached.get(),
        ),
    ];
    for (name, help, f) in per_view {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for view in registry.views() {
            let v = sum(&|s| s.view(view.id).map_or(0, f));
            let _ = writeln!(out, "{name}{{view=\"{}\"}} {v}", view.name);
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
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in shards {
            let _ = writeln!(
                out,
                "{name}{{shard=\"{}\"}} {}",
                s.shard,
                f(&s.cache).load(Relaxed)
            );
        }
    }
    type Read = fn(&ShardStats) -> u64;
    let counters: [(&str, &str, Read); 8] = [
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
            "Keys carried by Redis commands.",
            |s| s.redis_keys.get(),
        ),
        (
            "featureproxy_redis_timeouts_total",
            "Redis commands that timed out.",
            |s| s.redis_timeouts.get(),
        ),
        (
            "featureproxy_redis_unavailable_total",
            "Redis commands that failed: connection down or breaker open.",
            |s| s.redis_unavailable.get(),
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
    ];
    for (name, help, f) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            sum(&f)
        );
    }
    let _ = writeln!(out, "# HELP featureproxy_connections_open Client connections open now.\n# TYPE featureproxy_connections_open gauge\nfeatureproxy_connections_open {}", sum(&|s| s.connections_open.get()));
    let _ = writeln!(out, "# HELP featureproxy_inflight_requests GET and PUT requests in flight now.\n# TYPE featureproxy_inflight_requests gauge\nfeatureproxy_inflight_requests {}", sum(&|s| s.inflight_requests.get()));
    let _ = writeln!(out, "# HELP featureproxy_breaker_state Circuit breaker state per shard: 0 closed, 1 open, 2 half-open.\n# TYPE featureproxy_breaker_state gauge");
    for s in shards {
        let _ = writeln!(
            out,
            "featureproxy_breaker_state{{shard=\"{}\"}} {}",
            s.shard,
            s.breaker_state.load(Relaxed)
        );
    }
    let _ = writeln!(out, "# HELP featureproxy_redis_connected 1 while the shard's Redis connection is up.\n# TYPE featureproxy_redis_connected gauge");
    for s in shards {
        let _ = writeln!(
            out,
            "featureproxy_redis_connected{{shard=\"{}\"}} {}",
            s.shard,
            s.redis_connected.load(Relaxed) as u8
        );
    }
    out
}
