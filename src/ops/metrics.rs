//! Every metric the proxy serves, defined once: its name, kind, help, labels and how its samples
//! are read from the shards' counters ([`crate::telemetry::counters`]) and histograms. `/metrics`
//! renders [`METRICS`] in one loop ([`super::prom`]); a new counter is a field in `counters.rs`
//! and a row here. A test checks that each name is unique and documented in the README.

use std::sync::atomic::Ordering::Relaxed;

use featureproxy_protocol::{ErrorCode, Status};

use super::metric::{counter, gauge, histogram};
pub use super::metric::{Kind, Metric, Read, Samples, Scrape, Value, AGE_BOUNDS, LATENCY_BOUNDS};
use crate::store::breaker::BreakerState;
use crate::telemetry::counters::{
    AuthFailure, CloseReason, Handshake, RedirectKind, FORBIDDEN_OPS, OPS,
};

/// Every metric of the data path, in the order `/metrics` shows them; the value-watching ones
/// follow ([`super::value_metrics::VALUE_METRICS`], see [`all`]).
pub static METRICS: &[Metric] = &[
    counter(
        "featureproxy_requests_total",
        "Requests answered, by op and outcome (ok, or error: an ERROR frame).",
        &["op", "outcome"],
        Read::Custom(|sc, out| {
            for op in OPS {
                let name = op.name().to_lowercase();
                let ok = sc.sum(|s| s.requests_ok.of(op).get());
                let failed = sc.sum(|s| s.requests_failed.of(op).get());
                out.sample(&[&name, "ok"], Value::Count(ok));
                out.sample(&[&name, "error"], Value::Count(failed));
            }
        }),
    ),
    counter(
        "featureproxy_errors_total",
        "ERROR frames sent, by code (protocol errors included).",
        &["code"],
        Read::Custom(|sc, out| {
            for code in ErrorCode::ALL {
                let v = sc.sum(|s| s.errors(code).get());
                out.sample(&[&code.name().to_lowercase()], Value::Count(v));
            }
        }),
    ),
    counter(
        "featureproxy_reloads_total",
        "Reloads (SIGHUP or POST /admin/reload) of the config file's views, the access file and the TLS port's certificate, key and client CA, by result: applied, or refused (a file unreadable or invalid, or a change that needs a restart: nothing changes, what was in force stays, and the log says why).",
        &["result"],
        Read::Custom(|sc, out| {
            out.sample(&["applied"], Value::Count(sc.src.reloads.applied.get()));
            out.sample(&["refused"], Value::Count(sc.src.reloads.refused.get()));
        }),
    ),
    gauge(
        "featureproxy_config_generation",
        "The configuration's generation: 1 at start, one more for each reload applied (SIGHUP or POST /admin/reload).",
        &[],
        Read::Custom(|sc, out| out.sample(&[], Value::Count(sc.src.reloads.generation.get()))),
    ),
    gauge(
        "featureproxy_config_last_reload_successful",
        "1 when the last reload was applied (or none was tried), 0 when it was refused: what was in force before still is, and the log and /stats say why.",
        &[],
        Read::Custom(|sc, out| {
            let ok = sc.src.reloads.last_ok.load(Relaxed);
            out.sample(&[], Value::Count(ok as u64))
        }),
    ),
    gauge(
        "featureproxy_config_last_reload_timestamp_seconds",
        "Unix time of the last reload tried, applied or refused (0 before any).",
        &[],
        Read::Custom(|sc, out| {
            let ms = sc.src.reloads.last_unix_ms.get();
            out.sample(&[], Value::Real(ms as f64 / 1000.0))
        }),
    ),
    gauge(
        "featureproxy_access_principals",
        "Principals in the access table in force (the auth_token setting counts as one; 0 when no token is asked for).",
        &[],
        Read::Custom(|sc, out| out.sample(&[], Value::Count(sc.src.reloads.principals.get()))),
    ),
    counter(
        "featureproxy_entities_total",
        "Entities served by GET, by view and status.",
        &["view", "status"],
        Read::Custom(|sc, out| {
            for view in sc.src.registry().views() {
                for st in Status::ALL {
                    let v = sc.sum(|s| {
                        s.view(view.id)
                            .map_or(0, |vs| vs.entities[st as usize].get())
                    });
                    out.sample(&[&view.name, st.name()], Value::Count(v));
                }
            }
        }),
    ),
    counter(
        "featureproxy_entities_cached_total",
        "Entities served from the hot cache (status bit 0x80).",
        &["view"],
        Read::PerView(|v| v.cached.get()),
    ),
    counter(
        "featureproxy_cache_hits_total",
        "Hot-cache lookups that found the entity.",
        &["view"],
        Read::PerView(|v| v.cache_hits.get()),
    ),
    counter(
        "featureproxy_cache_misses_total",
        "Hot-cache lookups that did not.",
        &["view"],
        Read::PerView(|v| v.cache_misses.get()),
    ),
    counter(
        "featureproxy_cache_admissions_total",
        "Entries admitted to the hot cache.",
        &["shard"],
        Read::PerShard(|s| s.cache.admissions.load(Relaxed)),
    ),
    counter(
        "featureproxy_cache_rejections_total",
        "Entries dropped from the probation FIFO without a second read (one-hit wonders, scans).",
        &["shard"],
        Read::PerShard(|s| s.cache.rejections.load(Relaxed)),
    ),
    counter(
        "featureproxy_cache_evictions_total",
        "Entries evicted from the main FIFO to make room.",
        &["shard"],
        Read::PerShard(|s| s.cache.evictions.load(Relaxed)),
    ),
    counter(
        "featureproxy_cache_expirations_total",
        "Entries found past their hot-cache TTL (a miss; each counted once, and kept for the refresh that follows).",
        &["shard"],
        Read::PerShard(|s| s.cache.expirations.load(Relaxed)),
    ),
    counter(
        "featureproxy_cache_invalidations_total",
        "Entries dropped because a PUT wrote the key.",
        &["shard"],
        Read::PerShard(|s| s.cache.invalidations.load(Relaxed)),
    ),
    gauge(
        "featureproxy_cache_bytes",
        "Bytes charged to the hot cache (keys, rows, per-entry overhead).",
        &["shard"],
        Read::PerShard(|s| s.cache.bytes.load(Relaxed)),
    ),
    gauge(
        "featureproxy_cache_entries",
        "Entries in the hot cache.",
        &["shard"],
        Read::PerShard(|s| s.cache.entries.load(Relaxed)),
    ),
    gauge(
        "featureproxy_cache_capacity_bytes",
        "The hot cache's byte bound.",
        &["shard"],
        Read::PerShard(|s| s.cache.capacity.load(Relaxed)),
    ),
    counter(
        "featureproxy_client_gets_total",
        "GET requests received (coalescing input).",
        &[],
        Read::Total(|s| {
            s.requests_ok.of(featureproxy_protocol::Op::Get).get()
                + s.requests_failed.of(featureproxy_protocol::Op::Get).get()
        }),
    ),
    counter(
        "featureproxy_entities_requested_total",
        "Entities asked for in GETs.",
        &[],
        Read::Total(|s| s.entities_requested.get()),
    ),
    counter(
        "featureproxy_redis_commands_total",
        "Commands sent to Redis (one MGET per coalesced batch, one SET per written row).",
        &[],
        Read::Total(|s| s.redis_commands.get()),
    ),
    counter(
        "featureproxy_redis_keys_total",
        "Keys carried by Redis commands; divided by commands, the keys per command.",
        &[],
        Read::Total(|s| s.redis_keys.get()),
    ),
    counter(
        "featureproxy_singleflight_joins_total",
        "Entity reads that joined a Redis read already in flight.",
        &[],
        Read::Total(|s| s.singleflight_joins.get()),
    ),
    counter(
        "featureproxy_breaker_transitions_total",
        "Circuit breaker state changes.",
        &[],
        Read::Total(|s| s.breaker_transitions.get()),
    ),
    counter(
        "featureproxy_connections_accepted_total",
        "Client connections accepted.",
        &[],
        Read::Total(|s| s.connections_accepted.get()),
    ),
    counter(
        "featureproxy_connections_refused_total",
        "Client connections refused at max_connections_per_shard (OVERLOADED).",
        &[],
        Read::Total(|s| s.connections_refused.get()),
    ),
    counter(
        "featureproxy_bytes_in_total",
        "Bytes read from clients.",
        &[],
        Read::Total(|s| s.bytes_in.get()),
    ),
    counter(
        "featureproxy_bytes_out_total",
        "Bytes written to clients.",
        &[],
        Read::Total(|s| s.bytes_out.get()),
    ),
    counter(
        "featureproxy_redis_errors_total",
        "Redis commands that failed, by kind (timeout; unavailable: connection down).",
        &["kind"],
        Read::Custom(|sc, out| {
            out.sample(
                &["timeout"],
                Value::Count(sc.sum(|s| s.redis_timeouts.get())),
            );
            out.sample(
                &["unavailable"],
                Value::Count(sc.sum(|s| s.redis_unavailable.get())),
            );
        }),
    ),
    counter(
        "featureproxy_cluster_redirects_total",
        "Redis Cluster answers about where keys live, by kind (moved: followed once and the slot map refreshed; ask: followed once; tryagain, clusterdown: the keys got DEGRADED defaults).",
        &["kind"],
        Read::Custom(|sc, out| {
            for kind in RedirectKind::ALL {
                let n = sc.sum(|s| s.cluster_redirects[kind as usize].get());
                out.sample(&[kind.name()], Value::Count(n));
            }
        }),
    ),
    counter(
        "featureproxy_cluster_slot_map_refreshes_total",
        "Redis Cluster slot maps read (CLUSTER SLOTS: on a timer, after MOVED and after node failures).",
        &[],
        Read::Total(|s| s.cluster_refreshes.get()),
    ),
    counter(
        "featureproxy_cluster_slot_map_changes_total",
        "Slot maps that changed where slots live (failover, resharding); each flushes the shard's hot cache.",
        &[],
        Read::Total(|s| s.cluster_map_changes.get()),
    ),
    counter(
        "featureproxy_breaker_rejections_total",
        "Redis calls not made because the shard's breaker was open (reads got DEGRADED defaults).",
        &[],
        Read::Total(|s| s.breaker_rejections.get()),
    ),
    gauge(
        "featureproxy_view_stale_after_seconds",
        "Each view's stale_after: older values are served as STALE.",
        &["view"],
        Read::Custom(|sc, out| {
            for v in sc.src.registry().views() {
                out.sample(&[&v.name], Value::Real(v.stale_after.as_secs_f64()));
            }
        }),
    ),
    gauge(
        "featureproxy_view_max_staleness_seconds",
        "Each view's max_staleness: older values are withheld (EXPIRED defaults).",
        &["view"],
        Read::Custom(|sc, out| {
            for v in sc.src.registry().views() {
                out.sample(&[&v.name], Value::Real(v.max_staleness.as_secs_f64()));
            }
        }),
    ),
    counter(
        "featureproxy_stats_intervals_dropped_total",
        "Seconds of a shard's histograms and value tallies dropped because the stats thread fell behind: statistics have a gap.",
        &["shard"],
        Read::PerShard(|s| s.intervals_dropped.get()),
    ),
    gauge(
        "featureproxy_build_info",
        "Always 1; the version label says which build runs.",
        &["version"],
        Read::Custom(|_, out| out.sample(&[env!("CARGO_PKG_VERSION")], Value::Count(1))),
    ),
    gauge(
        "featureproxy_start_time_seconds",
        "Unix time the process started, to spot restarts.",
        &[],
        Read::Custom(|sc, out| out.sample(&[], Value::Count(sc.src.started_unix_s))),
    ),
    counter(
        "featureproxy_auth_failures_total",
        "Connections refused UNAUTHORIZED, by reason: no_hello (another first frame), missing_token, unknown_token, principal_removed (removed from the access file while connected).",
        &["reason"],
        Read::Custom(|sc, out| {
            for r in AuthFailure::ALL {
                let v = sc.sum(|s| s.auth_failures[r as usize].get());
                out.sample(&[r.name()], Value::Count(v));
            }
        }),
    ),
    counter(
        "featureproxy_principal_requests_total",
        "Requests made after HELLO, by the access file's principal that made them (auth_token for the auth_token setting; none on a server that asks for no credentials).",
        &["principal"],
        Read::Custom(|sc, out| {
            let table = sc.src.access_table.borrow().clone();
            for p in table.principals() {
                out.sample(&[&p.name], Value::Count(p.counts.requests()));
            }
        }),
    ),
    counter(
        "featureproxy_forbidden_total",
        "Requests answered FORBIDDEN (no grant for the view), by principal and op (get, put, schema).",
        &["principal", "op"],
        Read::Custom(|sc, out| {
            let table = sc.src.access_table.borrow().clone();
            for p in table.principals() {
                for op in FORBIDDEN_OPS {
                    let name = op.name().to_lowercase();
                    out.sample(&[&p.name, &name], Value::Count(p.counts.forbidden(op)));
                }
            }
        }),
    ),
    counter(
        "featureproxy_tls_handshakes_total",
        "TLS handshakes on the TLS port, by result (ok, refused) and reason: ok, not_tls (plaintext to the TLS port), timeout, peer_closed, no_client_cert, unknown_ca, expired, bad_certificate (the client's certificate, with mTLS), peer_refused_server_cert (the client does not trust the server's certificate), incompatible (no common version or ALPN), other; tls_on_plaintext_port counts ClientHellos sent to the plaintext port.",
        &["result", "reason"],
        Read::Custom(|sc, out| {
            for h in Handshake::ALL {
                let v = sc.sum(|s| s.tls_handshakes[h as usize].get());
                out.sample(&[h.result(), h.name()], Value::Count(v));
            }
        }),
    ),
    counter(
        "featureproxy_tls_handshake_seconds_total",
        "Time spent in TLS handshakes that succeeded; divided by featureproxy_tls_handshakes_total{result=\"ok\"}, the mean handshake time.",
        &[],
        Read::Custom(|sc, out| {
            let micros = sc.sum(|s| s.tls_handshake_micros.get());
            out.sample(&[], Value::Real(micros as f64 / 1e6));
        }),
    ),
    counter(
        "featureproxy_connections_closed_total",
        "Client connections closed, by reason.",
        &["reason"],
        Read::Custom(|sc, out| {
            for r in CloseReason::ALL {
                let v = sc.sum(|s| s.connections_closed[r as usize].get());
                out.sample(&[r.name()], Value::Count(v));
            }
        }),
    ),
    gauge(
        "featureproxy_connections_open",
        "Client connections open now.",
        &[],
        Read::Total(|s| s.connections_open.get()),
    ),
    counter(
        "featureproxy_requests_shed_total",
        "GETs answered OVERLOADED, unserved, because their connection's queue would take longer than shed_queue_delay to serve, or a queue stood in the shard, the shard already had as many waiting on Redis as it answers in half the default deadline, and the connection had more than 16 in flight.",
        &[],
        Read::Total(|s| s.requests_shed.get()),
    ),
    gauge(
        "featureproxy_inflight_requests",
        "GET and PUT requests in flight now.",
        &[],
        Read::Total(|s| s.inflight_requests.get()),
    ),
    gauge(
        "featureproxy_breaker_state",
        "Circuit breaker state per shard: 0 closed, 1 open, 2 half-open.",
        &["shard"],
        Read::PerShard(|s| s.breaker_state.load(Relaxed) as u64),
    ),
    gauge(
        "featureproxy_cluster_node_up",
        "Per Redis Cluster node and role (primary, replica): shards connected to it.",
        &["node", "role"],
        Read::Custom(|sc, out| {
            for (node, per_shard) in sc.by_node() {
                let role = if per_shard.iter().any(|n| n.replica.load(Relaxed)) { "replica" } else { "primary" };
                let up = per_shard.iter().filter(|n| n.connected.load(Relaxed)).count();
                out.sample(&[&node, role], Value::Count(up as u64));
            }
        }),
    ),
    gauge(
        "featureproxy_cluster_node_breakers_open",
        "Per Redis Cluster node: shards whose breaker for it is open (its keys get DEGRADED defaults, or a replica serves them).",
        &["node"],
        Read::PerNode(|n| {
            (BreakerState::from_gauge(n.breaker_state.load(Relaxed)) == BreakerState::Open) as u64
        }),
    ),
    counter(
        "featureproxy_cluster_node_keys_total",
        "Per Redis Cluster node: keys read or written there.",
        &["node"],
        Read::PerNode(|n| n.keys.get()),
    ),
    counter(
        "featureproxy_cluster_node_errors_total",
        "Per Redis Cluster node: calls that failed (timeouts, connection down, CLUSTERDOWN).",
        &["node"],
        Read::PerNode(|n| n.errors.get()),
    ),
    gauge(
        "featureproxy_cache_tracking",
        "1 while Redis client tracking keeps the shard's hot cache coherent with writes made behind the proxy.",
        &["shard"],
        Read::PerShard(|s| s.tracking_armed.load(Relaxed) as u64),
    ),
    gauge(
        "featureproxy_redis_connected",
        "1 while the shard's Redis connection is up.",
        &["shard"],
        Read::PerShard(|s| s.redis_up() as u64),
    ),
    histogram(
        "featureproxy_request_duration_seconds",
        "Server-side latency, from a request read to its reply queued, by op and view.",
        &["op", "view"],
        |sc, out| {
            let total = sc.total();
            // A view a reload added after the histograms were read shows from the next scrape.
            for view in sc.src.registry().views() {
                let i = view.id as usize - 1;
                let (Some(get), Some(put)) = (total.get_us.get(i), total.put_us.get(i)) else {
                    continue;
                };
                out.histogram(&["get", &view.name], get, 1e-6, &LATENCY_BOUNDS);
                out.histogram(&["put", &view.name], put, 1e-6, &LATENCY_BOUNDS);
            }
        },
    ),
    histogram(
        "featureproxy_feature_age_seconds",
        "Age (now - computed_at) of every stored value found, by view.",
        &["view"],
        |sc, out| {
            let total = sc.total();
            for view in sc.src.registry().views() {
                let Some(h) = total.age_ms.get(view.id as usize - 1) else {
                    continue;
                };
                out.histogram(&[&view.name], h, 1e-3, &AGE_BOUNDS);
            }
        },
    ),
    gauge(
        "featureproxy_feature_age_max_seconds",
        "Oldest value served per view over the last one-second interval.",
        &["view"],
        Read::Custom(|sc, out| {
            let last = sc.last();
            for view in sc.src.registry().views() {
                let Some(h) = last.age_ms.get(view.id as usize - 1) else {
                    continue;
                };
                out.sample(&[&view.name], Value::Real(h.max() as f64 / 1000.0));
            }
        }),
    ),
    histogram(
        "featureproxy_redis_command_duration_seconds",
        "Redis command latency as the proxy sees it.",
        &[],
        |sc, out| out.histogram(&[], &sc.total().redis_us, 1e-6, &LATENCY_BOUNDS),
    ),
];

/// Every metric the proxy serves, in the order `/metrics` shows them.
pub fn all() -> impl Iterator<Item = &'static Metric> {
    METRICS.iter().chain(super::value_metrics::VALUE_METRICS)
}

#[cfg(test)]
mod tests {
    use super::all;
    use std::collections::HashSet;

    #[test]
    fn every_metric_name_is_unique_and_documented_in_the_readme() {
        let readme = include_str!("../../README.md");
        let mut seen = HashSet::new();
        for m in all() {
            assert!(seen.insert(m.name), "{} is defined twice", m.name);
            assert!(
                m.name.starts_with("featureproxy_"),
                "{}: every metric name starts with featureproxy_",
                m.name
            );
            assert!(
                readme.contains(m.name),
                "{} is served but README.md does not document it",
                m.name
            );
            assert!(!m.help.is_empty(), "{} has no help text", m.name);
        }
    }
}
