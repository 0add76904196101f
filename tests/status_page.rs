//! The status page at `/` on the stats port, in a real browser: Debian's headless `chromium`,
//! driven through Debian's `chromedriver` with the W3C WebDriver protocol (JSON over HTTP,
//! spoken here by hand). Against a proxy with two shards under load on both views, the page
//! shows what `/stats` says and moves with it, turns red when Redis dies, loads nothing from
//! anywhere but the proxy, and says so when the proxy stops answering. Also, without a browser:
//! what `/stats` and `/stats/history` gained for the page, and how the endpoint routes.
//!
//! Needs `chromium` and its `chromedriver` on PATH (Debian packages `chromium` and
//! `chromium-driver`; `.ci/run` installs them through `.ci/install-deps`). The test saves two
//! screenshots in `$CARGO_TARGET_TMPDIR`; with `UPDATE_SCREENSHOTS=1` it first lets the load run
//! 90 s (so the sparklines have a history) and also writes them to `docs/`, where the README
//! shows them.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, free_port, now_ms, wait_port, Proxy, Redis};
use featureproxy_client::{Client, ClientOptions};
use serde_json::{json, Value};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The first of `names` found on PATH.
fn on_path(names: &[&str]) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "none of {names:?} is on PATH: install chromium and its chromedriver (Debian: \
                 apt-get install chromium chromium-driver; .ci/run installs them)"
            )
        })
}

/// One HTTP/1.1 exchange: (status, headers with lowercase names, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, BTreeMap<String, String>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Read the head, then exactly Content-Length bytes (chromedriver may keep the socket open).
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "{method} {path}: connection closed before the head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: BTreeMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let len: Option<usize> = headers.get("content-length").map(|v| v.parse().unwrap());
    let mut body = raw[head_end..].to_vec();
    while len.is_none_or(|l| body.len() < l) {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    (status, headers, String::from_utf8(body).unwrap())
}

/// Standard base64 (WebDriver screenshots), without a crate for it.
fn base64_decode(text: &str) -> Vec<u8> {
    let digit = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let clean: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= (digit(c) as u32) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Headless chromium through chromedriver: one session, ended (and the driver killed) on drop.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    fn start() -> Browser {
        let chromium = on_path(&["chromium", "chromium-browser"]);
        let chromedriver = on_path(&["chromedriver"]);
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_port(port);
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--hide-scrollbars", "--window-size=1400,900"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = b.call("POST", "/session", caps);
        b.session = v["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// One WebDriver command; its `value`, or a panic with the driver's error.
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (status, _, text) = http(self.port, method, path, &body);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(status, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    fn session(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn goto(&self, url: &str) {
        self.session("POST", "/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body) in the page; its return value.
    fn eval(&self, script: &str) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// The console's entries since the last call (level, message, source).
    fn console(&self) -> Vec<Value> {
        let v = self.session("POST", "/se/log", json!({"type": "browser"}));
        v.as_array().cloned().unwrap_or_default()
    }

    fn screenshot(&self) -> Vec<u8> {
        let png = base64_decode(
            self.session("GET", "/screenshot", Value::Null)
                .as_str()
                .unwrap(),
        );
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
        png
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = std::panic::catch_unwind(|| {
                let path = format!("/session/{}", self.session);
                http(self.port, "DELETE", &path, "")
            });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// What the page shows, read from its DOM as a person would read it (texts and their red state).
const READ_PAGE: &str = r##"
const q = (s, root) => (root || document).querySelector(s);
const cell = (tr, c) => { const td = q("td." + c, tr); return { text: td.textContent, bad: td.classList.contains("bad") }; };
const points = (tr, c) => q("td." + c + " polyline", tr).getAttribute("points") || "";
return {
  origin: location.origin,
  now_ms: Number(q("#updated").dataset.nowMs || 0),
  version: q("#version").textContent,
  uptime: q("#uptime").textContent,
  config: q("#config").textContent,
  gets_rate: q("#gets-rate").textContent,
  gets_total: q("#gets-total").textContent,
  banner: q("#banner").hidden ? null : q("#banner").textContent,
  alerts: [...document.querySelectorAll("#alerts li[data-alert]")].map(li => li.dataset.alert),
  views: [...document.querySelectorAll("#views tbody tr")].map(tr => ({
    name: tr.dataset.view,
    gets: cell(tr, "gets"), p50: cell(tr, "p50"), p99: cell(tr, "p99"),
    defaults: cell(tr, "defaults"), hit: cell(tr, "hit"), limits: cell(tr, "limits"),
    spark_gets: points(tr, "spark-gets"), spark_p99: points(tr, "spark-p99"),
  })),
  values: [...document.querySelectorAll("#values tbody tr")].map(tr => ({
    view: tr.dataset.view, feature: tr.dataset.feature,
    psi: cell(tr, "psi"), zero: cell(tr, "zero"), samples: cell(tr, "samples"),
  })),
  shards: [...document.querySelectorAll("#shards tbody tr")].map(tr => ({
    shard: Number(tr.dataset.shard), redis: cell(tr, "redis"), breaker: cell(tr, "breaker"),
  })),
  requests: performance.getEntriesByType("navigation").concat(performance.getEntriesByType("resource")).map(e => e.name),
};
"##;

/// The training baseline of two of user_features's features (see the chromium test).
const BASELINE: &str = r#"{"version": 1, "views": {"user_features": {"features": {
  "f0": {"dtype": "f32", "edges": [4096, 8192, 12288], "expected": [0.25, 0.25, 0.25, 0.25],
         "zero_share": 0.0, "default_share": 0.0},
  "f1": {"dtype": "f32", "edges": [1024, 2048], "expected": [0.98, 0.01, 0.01],
         "zero_share": 0.0, "default_share": 0.0}}}}}"#;

/// The feature-values table: per view its five worst-drifting features, the drifting one first
/// and red, with the PSI and sample counts /stats has, and the drift among the alerts.
fn check_value_table(browser: &Browser, proxy: &Proxy) {
    let page = eventually(
        Duration::from_secs(20),
        "the value table to show f1's PSI",
        || {
            let p = browser.eval(READ_PAGE);
            let psi_shown = p["values"].as_array().unwrap().iter().any(|r| {
                r["feature"] == "f1" && number(r["psi"]["text"].as_str().unwrap()).is_some()
            });
            psi_shown.then_some(p)
        },
    );
    let stats = stats(proxy);
    let rows = |v: &str| -> Vec<&Value> {
        page["values"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["view"] == v)
            .collect()
    };
    let features = |v: &str| -> Vec<&str> {
        rows(v)
            .iter()
            .map(|r| r["feature"].as_str().unwrap())
            .collect()
    };
    // By PSI, then (all without a baseline at 0) in registry order.
    assert_eq!(features("user_features"), ["f1", "f0", "f2", "f3", "f4"]);
    assert_eq!(rows("fraud_features").len(), 5, "{}", page["values"]);
    let watched = |feature: &str| {
        stats["values"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["view"] == "user_features")
            .and_then(|v| {
                v["features"]
                    .as_array()?
                    .iter()
                    .find(|f| f["feature"] == feature)
            })
            .unwrap_or_else(|| panic!("/stats has no values for user_features.{feature}"))
            .clone()
    };
    for r in rows("user_features") {
        let feature = r["feature"].as_str().unwrap();
        let psi = number(r["psi"]["text"].as_str().unwrap());
        let in_stats = watched(feature)["window"]["psi"].as_f64();
        match feature {
            "f1" => {
                let (shown, served) = (psi.unwrap(), in_stats.unwrap());
                assert!(shown > 1.0 && r["psi"]["bad"] == true, "f1 drifts: {r}");
                assert!(
                    (shown - served).abs() <= 0.1 * served,
                    "f1's PSI: page {shown}, /stats {served}"
                );
            }
            "f0" => {
                let shown = psi.unwrap();
                assert!(shown < 0.2 && r["psi"]["bad"] == false, "f0 does not: {r}");
            }
            _ => assert_eq!((psi, in_stats), (None, None), "no baseline, no PSI: {r}"),
        }
        // Every entity is watched (sample_rate 1.0) and a PSI is shown only from 1,000.
        let samples = number(r["samples"]["text"].as_str().unwrap()).unwrap();
        assert!(samples >= 1000.0, "{r}");
        // Seeded values are uniform over [0, 16384): almost never exactly 0.
        assert_eq!(r["zero"]["bad"], false, "{r}");
    }
    for r in rows("fraud_features") {
        assert_eq!(r["psi"]["text"], "–", "fraud_features has no baseline: {r}");
    }
    assert!(
        page["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "FeatureproxyFeatureDrift"),
        "{}",
        page["alerts"]
    );
}

/// A number as the page prints it ("412", "0.204", "12.3k", "4,629", "5%"); None for "–".
fn number(text: &str) -> Option<f64> {
    let t = text.trim().replace(',', "");
    let (t, scale) = match t.strip_suffix('k') {
        Some(t) => (t.to_string(), 1000.0),
        None => (t.trim_end_matches('%').to_string(), 1.0),
    };
    t.parse::<f64>().ok().map(|v| v * scale)
}

fn try_view<'a>(page: &'a Value, name: &str) -> Option<&'a Value> {
    page["views"].as_array()?.iter().find(|v| v["name"] == name)
}

fn view<'a>(page: &'a Value, name: &str) -> &'a Value {
    try_view(page, name).unwrap_or_else(|| panic!("no row for {name} on the page: {page}"))
}

fn stats(proxy: &Proxy) -> Value {
    let (code, body) = proxy.http("/stats");
    assert_eq!(code, 200);
    serde_json::from_str(&body).unwrap()
}

/// GETs at a steady pace on every shard and both views, until `stop`: 2 connections (one per
/// shard) x 2 views x 100 GET/s, 4 seeded keys each (3 hot, 1 cold).
fn start_load(
    rt: &tokio::runtime::Runtime,
    proxy: &Proxy,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) {
    let addr = proxy.addr();
    let clients = rt.block_on(async {
        let mut per_shard: Vec<Option<Client>> = vec![None, None];
        for _ in 0..200 {
            let opts = ClientOptions {
                pool_size: 1,
                ..Default::default()
            };
            let c = Client::connect(&addr, opts).await.unwrap();
            let shard = c.hello_info().await.unwrap().shard as usize;
            per_shard[shard].get_or_insert(c);
            if per_shard.iter().all(Option::is_some) {
                break;
            }
        }
        per_shard
            .into_iter()
            .map(|c| c.expect("a connection on each of the 2 shards"))
            .collect::<Vec<_>>()
    });
    for c in clients {
        for (view, prefix) in [("user_features", "u:"), ("fraud_features", "f:")] {
            let (c, stop, sent) = (c.clone(), stop.clone(), sent.clone());
            rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut i = 0u64;
                while !stop.load(Relaxed) {
                    tick.tick().await;
                    // Three of 100 hot keys (the hot cache serves them) and one of 900 others.
                    let keys: Vec<String> = (0..3)
                        .map(|j| (i * 3 + j) % 100)
                        .chain([100 + i % 900])
                        .map(|k| format!("{prefix}{k}"))
                        .collect();
                    i += 1;
                    // Errors are expected once Redis or the proxy is gone; the page says so.
                    if c.get(view, &keys).await.is_ok() {
                        sent.fetch_add(1, Relaxed);
                    }
                }
            });
        }
    }
}

fn seed(rt: &tokio::runtime::Runtime, proxy: &Proxy, view: &str, prefix: &str) {
    let seeded = rt
        .block_on(loadgen::seed::seed(loadgen::seed::SeedConfig {
            addr: proxy.addr(),
            view: view.into(),
            entities: 1000,
            cold_fraction: 0.0,
            batch: 200,
            inflight: 4,
            connections: 2,
            seed: 1,
            key_prefix: prefix.as_bytes().to_vec(),
            token: None,
            verify: 100,
            tls: None,
        }))
        .unwrap();
    assert_eq!(seeded.written, 1000);
}

fn save_screenshot(png: &[u8], name: &str) {
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&tmp, png).unwrap();
    eprintln!("screenshot: {}", tmp.display());
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(name);
        std::fs::create_dir_all(docs.parent().unwrap()).unwrap();
        std::fs::write(&docs, png).unwrap();
        eprintln!("screenshot: {}", docs.display());
    }
}

/// `a` and `b` within a factor `f` of each other.
fn near(a: f64, b: f64, f: f64) -> bool {
    a > 0.0 && b > 0.0 && a <= b * f && b <= a * f
}

#[test]
fn the_status_page_in_chromium_follows_the_proxy_and_turns_red_when_redis_dies() {
    let started = Instant::now();
    let mut redis = Redis::start();
    // A patient deadline: while chromium starts, two busy cores can hold a GET past the default
    // 50 ms, and its entities would be served DEGRADED before Redis is touched.
    // user_features is watched at every entity against a baseline made so that f1 drifts (the
    // baseline puts 98% of f1 below 1024, the seeded values are uniform over [0, 16384)) and f0
    // does not (quartiles); its other features have no baseline, so no PSI.
    let baseline_dir = tempfile::tempdir().unwrap();
    let baseline = baseline_dir.path().join("user_features.json");
    std::fs::write(&baseline, BASELINE).unwrap();
    let registry = common::example_registry().replacen(
        "hot_cache_ttl = \"1s\"",
        &format!(
            "hot_cache_ttl = \"1s\"\nsample_rate = 1.0\nbaseline = {:?}",
            baseline.display().to_string()
        ),
        1,
    );
    let mut proxy =
        Proxy::start_custom(&redis.url(), 2, "default_deadline = \"5s\"", &registry, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    seed(&rt, &proxy, "user_features", "u:");
    seed(&rt, &proxy, "fraud_features", "f:");
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    start_load(&rt, &proxy, stop.clone(), sent.clone());

    // The page and its files carry the policy the browser will enforce.
    for (path, ctype) in [
        ("/", "text/html; charset=utf-8"),
        ("/status.js", "text/javascript; charset=utf-8"),
        ("/status.css", "text/css; charset=utf-8"),
    ] {
        let (code, h, body) = http(proxy.stats_port, "GET", path, "");
        assert_eq!((code, h["content-type"].as_str()), (200, ctype), "{path}");
        assert_eq!(h["content-security-policy"], CSP, "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["cache-control"], "no-store", "{path}");
        assert!(body.len() > 1000, "{path}: {} bytes", body.len());
    }

    let browser = Browser::start();
    let url = format!("http://127.0.0.1:{}/", proxy.stats_port);
    browser.goto(&url);

    // Both views with traffic, both shards, and a few seconds of sparkline.
    let busy_at = eventually(
        Duration::from_secs(20),
        "the page to show GETs on both views",
        || {
            let page = browser.eval(READ_PAGE);
            let row = |v: &str| try_view(&page, v).cloned();
            let busy = ["user_features", "fraud_features"].iter().all(|v| {
                row(v)
                    .and_then(|r| number(r["gets"]["text"].as_str()?))
                    .unwrap_or(0.0)
                    > 10.0
            });
            let points = row("user_features")
                .and_then(|r| Some(r["spark_gets"].as_str()?.split(' ').count()))
                .unwrap_or(0);
            let shards = page["shards"].as_array().unwrap().len();
            (busy && points >= 3 && shards == 2).then(|| page["now_ms"].as_u64().unwrap())
        },
    );
    // Past the load's first seconds (its first one-second intervals are partial), compare with
    // /stats at about the same time (read once before and once after the page), and with GET/s
    // measured here from /stats's counters over the server's clock.
    eventually(Duration::from_secs(10), "two more polls", || {
        (browser.eval(READ_PAGE)["now_ms"].as_u64().unwrap() >= busy_at + 2000).then_some(())
    });
    let before = stats(&proxy);
    let page = browser.eval(READ_PAGE);
    let after = stats(&proxy);
    assert_eq!(page["version"], format!("v{}", env!("CARGO_PKG_VERSION")));
    assert!(
        page["config"].as_str().unwrap().starts_with("generation 1"),
        "{}",
        page["config"]
    );
    let names: Vec<&str> = page["views"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["user_features", "fraud_features"],
        "one row per view, in file order"
    );
    for name in names {
        let row = view(&page, name);
        let shown = |k: &str| {
            number(row[k]["text"].as_str().unwrap()).unwrap_or_else(|| panic!("{name} {k}: {row}"))
        };
        let served = |k: &str| {
            let (a, b) = (
                before["views"][name][k].as_f64().unwrap(),
                after["views"][name][k].as_f64().unwrap(),
            );
            (a.min(b), a.max(b))
        };
        let (lo, hi) = served("gets_last_s");
        let gets = shown("gets");
        assert!(
            gets >= lo / 1.5 && gets <= hi * 1.5,
            "{name}: page {gets} GET/s, /stats {lo}..{hi}"
        );
        for (col, key) in [("p50", "get_p50_ms"), ("p99", "get_p99_ms")] {
            let (lo, hi) = served(key);
            let ms = shown(col);
            assert!(
                ms >= lo / 10.0 && ms <= hi * 10.0,
                "{name} {col}: page {ms} ms, /stats {lo}..{hi} ms"
            );
        }
        assert!(shown("p50") <= shown("p99"), "{row}");
        // Seeded keys only: every entity is a value, none a default.
        assert_eq!(shown("defaults"), 0.0, "{name}: {row}");
        let limits = row["limits"]["text"].as_str().unwrap();
        let want = if name == "user_features" {
            "2m / 10m"
        } else {
            "30s / 5m"
        };
        assert_eq!(limits, want, "stale_after / max_staleness of {name}");
    }
    check_value_table(&browser, &proxy);
    for s in after["shards"].as_array().unwrap() {
        assert!(
            s["requests"]["get"]["ok"].as_u64().unwrap() > 100,
            "GETs on every shard: {s}"
        );
    }
    // Healthy: Redis up and breakers closed on both shards, nothing about Redis among the alerts.
    for sh in page["shards"].as_array().unwrap() {
        assert_eq!(
            (sh["redis"]["text"].as_str(), sh["redis"]["bad"].as_bool()),
            (Some("up"), Some(false)),
            "{sh}"
        );
        assert_eq!(
            (
                sh["breaker"]["text"].as_str(),
                sh["breaker"]["bad"].as_bool()
            ),
            (Some("closed"), Some(false)),
            "{sh}"
        );
    }
    assert!(
        !page["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains("Redis")),
        "{}",
        page["alerts"]
    );

    // Two seconds later the page has moved: newer server time, more GETs, longer sparklines.
    let t0 = page["now_ms"].as_u64().unwrap();
    let later = eventually(
        Duration::from_secs(10),
        "the page to poll twice more",
        || {
            let p = browser.eval(READ_PAGE);
            (p["now_ms"].as_u64().unwrap() >= t0 + 1800).then_some(p)
        },
    );
    let total = |p: &Value| number(p["gets_total"].as_str().unwrap()).unwrap();
    assert!(
        total(&later) > total(&page) + 100.0,
        "GETs {} then {}",
        total(&page),
        total(&later)
    );
    assert_ne!(later["uptime"], page["uptime"]);
    // The process's GET/s against the rate measured here from /stats's counters and clock over
    // the same two seconds.
    let now = stats(&proxy);
    let (g0, g1) = (
        before["merged"]["gets"].as_f64().unwrap(),
        now["merged"]["gets"].as_f64().unwrap(),
    );
    let dt = (now["now_ms"].as_f64().unwrap() - before["now_ms"].as_f64().unwrap()) / 1000.0;
    let measured = (g1 - g0) / dt;
    let shown_rate = number(later["gets_rate"].as_str().unwrap()).unwrap();
    assert!(
        near(shown_rate, measured, 2.0),
        "page {shown_rate} GET/s, /stats {measured} GET/s over {dt} s"
    );
    for name in ["user_features", "fraud_features"] {
        for spark in ["spark_gets", "spark_p99"] {
            assert_ne!(
                view(&later, name)[spark],
                view(&page, name)[spark],
                "{name} {spark} did not move"
            );
        }
    }
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        // For the README's picture: a minute and a half of sparkline.
        std::thread::sleep(Duration::from_secs(90));
    }
    save_screenshot(&browser.screenshot(), "status-page.png");

    // Nothing came from anywhere but the proxy, and the console is clean (a CSP violation or a
    // failed request is logged there as SEVERE).
    let origin = later["origin"].as_str().unwrap().to_string();
    let requests = later["requests"].as_array().unwrap();
    assert!(requests.len() >= 5, "{requests:?}");
    for r in requests {
        assert!(
            r.as_str().unwrap().starts_with(&format!("{origin}/")),
            "a request outside the proxy: {r}"
        );
    }
    let severe: Vec<Value> = browser
        .console()
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(severe.is_empty(), "browser console: {severe:?}");

    // Redis dies: the page turns its Redis state red, names the alert, and the views' defaults
    // (DEGRADED) go red as the hot cache's rows expire.
    redis.kill();
    eventually(
        Duration::from_secs(15),
        "the page to show Redis down",
        || {
            let p = browser.eval(READ_PAGE);
            let down = p["shards"]
                .as_array()
                .unwrap()
                .iter()
                .all(|sh| sh["redis"]["text"] == "down" && sh["redis"]["bad"] == true);
            let alerted = p["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == "FeatureproxyRedisDisconnected");
            (down && alerted).then_some(())
        },
    );
    for sh in stats(&proxy)["shards"].as_array().unwrap() {
        assert_eq!(sh["redis_connected"], false, "/stats agrees: {sh}");
    }
    let degraded = eventually(
        Duration::from_secs(15),
        "the defaults share to turn red",
        || {
            let p = browser.eval(READ_PAGE);
            let d = &view(&p, "user_features")["defaults"];
            (d["bad"] == true && number(d["text"].as_str().unwrap()).unwrap_or(0.0) > 5.0)
                .then_some(p)
        },
    );
    assert!(
        degraded["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "FeatureproxyDegradedServed"),
        "{}",
        degraded["alerts"]
    );
    save_screenshot(&browser.screenshot(), "status-page-redis-down.png");
    let severe: Vec<Value> = browser
        .console()
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(severe.is_empty(), "browser console: {severe:?}");

    // The proxy stops: the page says its numbers are stale instead of freezing them.
    stop.store(true, Relaxed);
    proxy.stop();
    let banner = eventually(Duration::from_secs(10), "the stale banner", || {
        browser.eval(READ_PAGE)["banner"]
            .as_str()
            .map(str::to_string)
    });
    assert!(banner.starts_with("stats unreachable"), "{banner}");
    assert!(
        sent.load(Relaxed) > 500,
        "GETs answered: {}",
        sent.load(Relaxed)
    );
    eprintln!("the status page test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_carries_what_the_status_page_reads() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 2, "");
    // One connection (one shard, one hot cache), with Redis tracking armed on both shards (arming
    // flushes the cache).
    let opts = ClientOptions {
        pool_size: 1,
        ..Default::default()
    };
    let c = Client::connect(proxy.addr(), opts).await.unwrap();
    eventually(Duration::from_secs(10), "tracking armed", || {
        (proxy.metric("featureproxy_cache_tracking", &[]) == 2.0).then_some(())
    });
    let now = now_ms();
    let rows: Vec<(String, u64, Vec<featureproxy_client::Value>)> = (0..3)
        .map(|i| (format!("k{i}"), now - 40_000, common::flat_row(1.0)))
        .collect();
    c.put("user_features", &rows).await.unwrap();
    // 3 FRESH values (40 s old, stale_after 2m) and one MISSING key, read 3 times: the third read
    // at the latest comes from the hot cache (Redis's notice of the PUT may drop the row the
    // first read cached; see common::read_until_cached).
    for _ in 0..3 {
        c.get("user_features", &["k0", "k1", "k2", "nope"])
            .await
            .unwrap();
    }
    let s = eventually(Duration::from_secs(5), "the GETs in the histograms", || {
        let s = stats(&proxy);
        (s["merged"]["since_start"]["views"]["user_features"]["get_ms"]["count"] == 3).then_some(s)
    });
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["now_ms"].as_u64().unwrap().abs_diff(now_ms()) < 5_000);
    assert!(s["uptime_s"].as_u64().unwrap() < 60);
    assert_eq!(
        s["config"],
        json!({"generation": 1, "last_reload_ok": true, "last_reload_unix_ms": 0,
               "last_reload_error": "", "reloads_applied": 0, "reloads_refused": 0})
    );
    let u = &s["views"]["user_features"];
    assert_eq!(
        (
            u["id"].as_u64(),
            u["stale_after_s"].as_f64(),
            u["max_staleness_s"].as_f64(),
            u["hot_cache_ttl_s"].as_f64()
        ),
        (Some(1), Some(120.0), Some(600.0), Some(1.0))
    );
    let f = &s["views"]["fraud_features"];
    assert_eq!(
        (
            f["id"].as_u64(),
            f["stale_after_s"].as_f64(),
            f["max_staleness_s"].as_f64(),
            f["hot_cache_ttl_s"].as_f64()
        ),
        (Some(2), Some(30.0), Some(300.0), Some(0.2))
    );
    // Statuses merged over shards equal the per-shard counts' sum, and what was sent.
    for st in [
        "fresh", "stale", "missing", "expired", "degraded", "invalid",
    ] {
        let per_shard: u64 = s["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sh| sh["entities"]["user_features"][st].as_u64().unwrap())
            .sum();
        assert_eq!(u["entities"][st].as_u64(), Some(per_shard), "{st}");
    }
    assert_eq!(
        (
            u["entities"]["fresh"].as_u64(),
            u["entities"]["missing"].as_u64()
        ),
        (Some(9), Some(3))
    );
    // Cache lookups and sheds as /metrics counts them.
    for (key, metric) in [
        ("cache_hits", "featureproxy_cache_hits_total"),
        ("cache_misses", "featureproxy_cache_misses_total"),
    ] {
        let m = proxy.metric(metric, &[("view", "user_features")]);
        assert_eq!(u[key].as_f64(), Some(m), "{key}");
    }
    assert!(
        u["cache_hits"].as_u64().unwrap() >= 3,
        "the third read comes from the hot cache: {u}"
    );
    assert_eq!(
        s["merged"]["requests_shed"].as_f64(),
        Some(proxy.metric("featureproxy_requests_shed_total", &[]))
    );
    assert_eq!(s["merged"]["gets"], 3);
    assert_eq!(s["merged"]["errors"]["unknown_view"], 0);
    // The last interval's figures: the age of the 40 s old values, latencies in short decimals.
    let age = u["age_max_s"].as_f64().unwrap();
    assert!(u["age_max_s"] == 0.0 || (39.0..60.0).contains(&age), "{u}");
    let body = proxy.http("/stats").1;
    assert!(
        !body.contains("0000000"),
        "floats are printed short: {body}"
    );

    // The history: a sample a second, oldest first, with the same paths as /stats.
    let h = eventually(Duration::from_secs(5), "three samples of history", || {
        let (code, body) = proxy.http("/stats/history");
        assert_eq!(code, 200);
        let h: Value = serde_json::from_str(&body).unwrap();
        (h["samples"].as_array().unwrap().len() >= 3).then_some(h)
    });
    let samples = h["samples"].as_array().unwrap();
    assert!(samples
        .windows(2)
        .all(|w| w[0]["now_ms"].as_u64() < w[1]["now_ms"].as_u64()));
    let last = samples.last().unwrap();
    assert_eq!(last["merged"]["gets"], 3);
    assert_eq!(last["views"]["user_features"]["entities"], u["entities"]);

    // Routing: GET only on the endpoint's paths, 404 elsewhere, the security headers on all.
    let (code, h, body) = http(proxy.stats_port, "POST", "/stats", "");
    assert_eq!(
        (code, h["allow"].as_str(), body.as_str()),
        (405, "GET", "/stats answers GET only\n")
    );
    let (code, h, _) = http(proxy.stats_port, "DELETE", "/", "");
    assert_eq!((code, h["allow"].as_str()), (405, "GET"));
    let (code, h, body) = http(proxy.stats_port, "GET", "/favicon.ico", "");
    assert_eq!(code, 404);
    assert!(body.contains("/metrics"), "{body}");
    assert_eq!(h["content-security-policy"], CSP);
    assert_eq!(
        http(proxy.stats_port, "GET", "/stats?x=1", "").0,
        200,
        "a query string is ignored"
    );
}
