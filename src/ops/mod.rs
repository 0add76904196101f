//! The operators' endpoint: `/metrics` (Prometheus text, [`prom`]), `/stats` (JSON,
//! [`stats_json`]), `/health` and `/ready` ([`health`]).
//!
//! Runs on threads of its own with blocking sockets, off the request path. It reads the shards'
//! relaxed atomic counters and the histogram aggregate (whose lock no shard ever takes) and adds
//! them up per scrape.

pub mod health;
pub mod metric;
pub mod metrics;
pub mod prom;
pub mod stats_json;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::config::registry::Registry;
use crate::telemetry::counters::ShardStats;
use crate::telemetry::histograms::{ShardHistograms, SharedAggregate};

/// Everything the endpoint reads.
pub struct Sources {
    pub shards: Vec<Arc<ShardStats>>,
    pub registry: Arc<Registry>,
    pub histograms: SharedAggregate,
    /// Unix seconds when the process started.
    pub started_unix_s: u64,
    /// Reloads, the configuration's generation and the principals in force.
    pub reloads: Arc<crate::telemetry::counters::ReloadCounters>,
    /// The access table in force, for its principals' counters.
    pub access_table: tokio::sync::watch::Receiver<Arc<crate::config::access::AccessTable>>,
}

impl Sources {
    /// Histograms summed over shards: (since start, last interval).
    pub fn merged_histograms(&self) -> (ShardHistograms, ShardHistograms) {
        let n = self.registry.views().len();
        let (mut total, mut last) = (ShardHistograms::new(n), ShardHistograms::new(n));
        if let Ok(agg) = self.histograms.lock() {
            for h in &agg.total {
                total.add(h);
            }
            for h in &agg.last {
                last.add(h);
            }
        }
        (total, last)
    }
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
        "/metrics" => (200, "text/plain; version=0.0.4", prom::metrics(src)),
        "/stats" => (
            200,
            "application/json",
            stats_json::stats(src).to_string() + "\n",
        ),
        "/health" => health::health(&src.shards),
        "/ready" => health::ready(&src.shards),
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
