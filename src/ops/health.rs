//! `/health` (is every shard connected, every breaker closed?) and `/ready` (has Redis answered
//! at least one shard?), for load balancers and orchestrators.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde_json::json;

use crate::store::breaker::BreakerState;
use crate::telemetry::counters::ShardStats;

/// `(status code, content type, body)` of an answer.
pub type Answer = (u16, &'static str, String);

/// 200 once Redis has answered some shard, else 503.
pub fn ready(shards: &[Arc<ShardStats>]) -> Answer {
    if shards.iter().any(|s| s.redis_up()) {
        (200, "application/json", "{\"ready\":true}\n".into())
    } else {
        let body = "{\"ready\":false,\"reason\":\"Redis has not answered yet\"}\n";
        (503, "application/json", body.into())
    }
}

/// 200 while every shard is connected with its breaker closed, else 503 naming the shards.
pub fn health(shards: &[Arc<ShardStats>]) -> Answer {
    let open: Vec<u16> = shards
        .iter()
        .filter(|s| BreakerState::from_gauge(s.breaker_state.load(Relaxed)) == BreakerState::Open)
        .map(|s| s.shard)
        .collect();
    let disconnected: Vec<u16> = shards
        .iter()
        .filter(|s| !s.redis_up())
        .map(|s| s.shard)
        .collect();
    // On a Redis Cluster: which nodes some shard cannot reach, or has its breaker open for.
    let mut nodes_down = std::collections::BTreeSet::new();
    let mut nodes_open = std::collections::BTreeSet::new();
    for s in shards {
        for n in s.node_list() {
            if !n.connected.load(Relaxed) {
                nodes_down.insert(n.addr.clone());
            }
            if BreakerState::from_gauge(n.breaker_state.load(Relaxed)) == BreakerState::Open {
                nodes_open.insert(n.addr.clone());
            }
        }
    }
    if open.is_empty() && disconnected.is_empty() && nodes_down.is_empty() && nodes_open.is_empty()
    {
        return (200, "application/json", "{\"status\":\"ok\"}\n".into());
    }
    let mut reasons = Vec::new();
    if !nodes_down.is_empty() {
        reasons.push(format!("Redis Cluster nodes unreachable: {nodes_down:?}"));
    }
    if !nodes_open.is_empty() {
        reasons.push(format!(
            "circuit breaker open for Redis Cluster nodes {nodes_open:?}"
        ));
    }
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
        "cluster_nodes_unreachable": nodes_down,
        "cluster_node_breakers_open": nodes_open,
    });
    (503, "application/json", body.to_string() + "\n")
}
