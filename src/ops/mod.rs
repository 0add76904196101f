//! The operators' endpoint: the status page at `/` ([`status`]), `/metrics` (Prometheus text,
//! [`prom`]), `/stats` (JSON, [`stats_json`]) and the last five minutes of it, `/stats/history`
//! ([`history`]), `/health` and `/ready` ([`health`]).
//!
//! Runs on threads of its own with blocking sockets, off the request path. It reads the shards'
//! relaxed atomic counters and the histogram aggregate (whose lock no shard ever takes) and adds
//! them up per scrape.

pub mod admin;
pub mod health;
pub mod history;
pub mod metric;
pub mod metrics;
pub mod prom;
pub mod stats_json;
pub mod status;
pub mod value_metrics;

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
    pub histograms: SharedAggregate,
    /// Unix seconds when the process started.
    pub started_unix_s: u64,
    /// Reloads, the configuration's generation and the principals in force.
    pub reloads: Arc<crate::telemetry::counters::ReloadCounters>,
    /// Reloads: the registry in force, and `POST /admin/reload`.
    pub reloader: Arc<crate::reload::Reloader>,
    /// The access table in force, for its principals' counters.
    pub access_table: tokio::sync::watch::Receiver<Arc<crate::config::access::AccessTable>>,
}

impl Sources {
    /// The registry in force (a reload replaces it).
    pub fn registry(&self) -> Arc<Registry> {
        self.reloader.registry()
    }

    /// What the served values look like, view by view (see [`crate::telemetry::value_report`]).
    pub fn value_reports(&self) -> crate::telemetry::value_report::Reports {
        let registry = self.registry();
        let now = crate::telemetry::histograms::unix_secs();
        match self.histograms.lock() {
            Ok(agg) => crate::telemetry::value_report::report(&agg.values, &registry, now),
            Err(_) => crate::telemetry::value_report::Reports {
                views: Vec::new(),
                max_features: 0,
            },
        }
    }

    /// Histograms summed over shards: (since start, last interval).
    pub fn merged_histograms(&self) -> (ShardHistograms, ShardHistograms) {
        let n = self.registry().max_id() as usize;
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

    /// The last interval's histograms summed over shards.
    pub fn merged_last(&self) -> ShardHistograms {
        let mut last = ShardHistograms::new(self.registry().max_id() as usize);
        if let Ok(agg) = self.histograms.lock() {
            for h in &agg.last {
                last.add(h);
            }
        }
        last
    }
}

/// At most this many scrapes are answered at once; more are closed at once.
const MAX_CONCURRENT: usize = 16;

/// What the endpoint's threads share: the sources it reads and the history it keeps.
pub struct Endpoint {
    pub src: Sources,
    pub history: history::History,
}

/// Binds the endpoint and serves it on threads of its own; returns the bound address.
pub fn start(addr: SocketAddr, sources: Sources) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let endpoint = Arc::new(Endpoint {
        src: sources,
        history: history::History::default(),
    });
    history::start_sampler(endpoint.clone());
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
                let (endpoint, busy) = (endpoint.clone(), busy.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("stats-conn".into())
                        .spawn(move || {
                            let _ = answer(stream, &endpoint);
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

/// One request as read off the socket: enough to route it and, for `/admin` endpoints, to read
/// its headers.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path without its query string.
    pub path: &'a str,
    /// The request line and headers, as sent.
    pub head: &'a str,
    pub peer: Option<SocketAddr>,
}

impl Request<'_> {
    /// The value of header `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// An answer: status, content type, body, and headers of its own (on top of [`SECURITY`]).
pub struct Response {
    pub status: u16,
    pub ctype: &'static str,
    pub body: std::borrow::Cow<'static, str>,
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Response {
    pub fn new(
        status: u16,
        ctype: &'static str,
        body: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Response {
        Response {
            status,
            ctype,
            body: body.into(),
            headers: Vec::new(),
        }
    }
}

impl From<health::Answer> for Response {
    fn from((status, ctype, body): health::Answer) -> Response {
        Response::new(status, ctype, body)
    }
}

/// Headers on every answer. The status page (`/`, [`status`]) is static files and a script
/// that reads `/stats` from the same origin: nothing else may load, run, be framed or be posted
/// to, and nothing is cached (the page and its numbers change with each build and each second).
pub const SECURITY: [(&str, &str); 3] = [
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
];

/// The endpoint's paths, each answered to GET only.
const PATHS: [&str; 8] = [
    "/",
    "/status.js",
    "/status.css",
    "/metrics",
    "/stats",
    "/stats/history",
    "/health",
    "/ready",
];

/// Routes one request.
pub fn route(req: &Request, ep: &Endpoint) -> Response {
    let src = &ep.src;
    let json = |v: serde_json::Value| Response::new(200, "application/json", v.to_string() + "\n");
    match (req.method, req.path) {
        ("GET", "/") => Response::new(200, "text/html; charset=utf-8", status::INDEX_HTML),
        ("GET", "/status.js") => {
            Response::new(200, "text/javascript; charset=utf-8", status::STATUS_JS)
        }
        ("GET", "/status.css") => Response::new(200, "text/css; charset=utf-8", status::STATUS_CSS),
        ("GET", "/metrics") => Response::new(200, "text/plain; version=0.0.4", prom::metrics(src)),
        ("GET", "/stats") => json(stats_json::stats(src)),
        ("GET", "/stats/history") => json(ep.history.json(&src.registry())),
        ("GET", "/health") => health::health(&src.shards).into(),
        ("GET", "/ready") => health::ready(&src.shards).into(),
        ("POST", "/admin/reload") => admin::reload(req, src),
        (_, "/admin/reload") => {
            let mut r = Response::new(405, "text/plain", "/admin/reload answers POST only\n");
            r.headers.push(("Allow", "POST"));
            r
        }
        (_, path) if PATHS.contains(&path) => {
            let mut r = Response::new(405, "text/plain", format!("{path} answers GET only\n"));
            r.headers.push(("Allow", "GET"));
            r
        }
        _ => Response::new(
            404,
            "text/plain",
            "not found: try / (the status page), /metrics, /stats, /health or /ready\n",
        ),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        422 => "Unprocessable Content",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn answer(mut stream: TcpStream, ep: &Endpoint) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 4096];
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
    let mut line = head.lines().next().unwrap_or("").split_whitespace();
    let method = line.next().unwrap_or("GET");
    let target = line.next().unwrap_or("/");
    let req = Request {
        method,
        path: target.split('?').next().unwrap_or(target),
        head: &head,
        peer: stream.peer_addr().ok(),
    };
    let resp = route(&req, ep);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status),
        resp.ctype,
        resp.body.len()
    );
    for (k, v) in SECURITY.iter().chain(&resp.headers) {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&resp.body);
    stream.write_all(out.as_bytes())
}
