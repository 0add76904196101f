//! The operators' endpoint, scraped and parsed with a real Prometheus text parser: counters move
//! by exactly the traffic sent, histograms fill, /stats has percentiles, and the endpoint answers
//! while the proxy is saturated.

mod common;

use std::time::Duration;

use common::{eventually, now_ms, Proxy, Redis};
use featureproxy_client::{Client, ClientOptions, ErrorCode, Value};

/// One scrape, parsed.
fn scrape(proxy: &Proxy) -> prometheus_parse::Scrape {
    let (code, body) = proxy.http("/metrics");
    assert_eq!(code, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format")
}

/// The value of the sample `name` whose labels match exactly `labels` (counters and gauges).
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a counter or gauge"),
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {} samples", found.len());
    found[0]
}

/// Count of histogram `name` with `labels`.
fn hist_count(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .find_map(|x| match &x.value {
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count as u64).max()
            }
            _ => None,
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_the_traffic_sent() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 2, "");
    let c = Client::connect(proxy.addr(), ClientOptions::default())
        .await
        .unwrap();
    c.schema("user_features").await.unwrap();
    let before = scrape(&proxy);

    let old = now_ms() - 30_000;
    let rows = [
        ("a", old, vec![Value::F32(1.0); 16]),
        ("b", old, vec![Value::F32(2.0); 16]),
    ];
    c.put("user_features", &rows).await.unwrap();
    for _ in 0..7 {
        c.get("user_features", &["a", "b", "zzz"]).await.unwrap();
    }
    assert!(c.schema("nope").await.is_err());
    let after = scrape(&proxy);

    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(
        delta(
            "featureproxy_requests_total",
            &[("op", "get"), ("outcome", "ok")]
        ),
        7.0
    );
    assert_eq!(
        delta(
            "featureproxy_requests_total",
            &[("op", "put"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "featureproxy_requests_total",
            &[("op", "schema"), ("outcome", "error")]
        ),
        1.0
    );
    assert_eq!(
        delta("featureproxy_errors_total", &[("code", "unknown_view")]),
        1.0
    );
    let entities = |status: &str| {
        delta(
            "featureproxy_entities_total",
            &[("view", "user_features"), ("status", status)],
        )
    };
    assert_eq!(entities("fresh"), 14.0);
    assert_eq!(entities("missing"), 7.0);
    assert_eq!(entities("degraded"), 0.0);
    assert_eq!(delta("featureproxy_entities_requested_total", &[]), 21.0);
    assert_eq!(delta("featureproxy_client_gets_total", &[]), 7.0);
    // Each entity was either a cache hit or a cache miss.
    let hits = delta(
        "featureproxy_cache_hits_total",
        &[("view", "user_features")],
    );
    let misses = delta(
        "featureproxy_cache_misses_total",
        &[("view", "user_features")],
    );
    assert_eq!(hits + misses, 21.0);
    assert_eq!(
        hits,
        delta(
            "featureproxy_entities_cached_total",
            &[("view", "user_features")]
        )
    );
    assert!(
        delta("featureproxy_bytes_in_total", &[]) > 0.0
            && delta("featureproxy_bytes_out_total", &[]) > 0.0
    );

    // Histograms arrive with the shards' next one-second interval.
    let s = eventually(Duration::from_secs(5), "the GET latency histogram", || {
        let s = scrape(&proxy);
        (hist_count(
            &s,
            "featureproxy_request_duration_seconds",
            &[("op", "get"), ("view", "user_features")],
        ) == 7)
            .then_some(s)
    });
    assert_eq!(
        hist_count(
            &s,
            "featureproxy_feature_age_seconds",
            &[("view", "user_features")]
        ),
        14
    );
    assert!(hist_count(&s, "featureproxy_redis_command_duration_seconds", &[]) >= 2);
    let (_, stats) = proxy.http("/stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let get = &stats["merged"]["since_start"]["views"]["user_features"]["get_ms"];
    assert_eq!(get["count"], 7);
    assert!(get["p99"].as_f64().unwrap() > 0.0 && get["p99"].as_f64() <= get["max"].as_f64());
    let age = &stats["merged"]["since_start"]["views"]["user_features"]["age_s"];
    let p50 = age["p50"].as_f64().unwrap();
    assert!(
        (29.0..40.0).contains(&p50),
        "age p50 {p50}s for rows computed 30 s ago"
    );
    assert_eq!(stats["shards"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_answers_while_the_proxy_is_saturated() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 1, "");
    let c = Client::connect(
        proxy.addr(),
        ClientOptions {
            pool_size: 4,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 64 callers on 4 connections saturate one shard: the proxy may shed some GETs (OVERLOADED)
    // rather than queue them, which is its job; any other error fails the test.
    let load: Vec<_> = (0..64)
        .map(|_| {
            let (c, keys, stop) = (c.clone(), keys.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut served, mut shed) = (0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match c.get("user_features", &keys).await {
                        Ok(_) => served += 1,
                        Err(featureproxy_client::Error::Server {
                            code: ErrorCode::Overloaded,
                            ..
                        }) => shed += 1,
                        Err(e) => panic!("a GET under saturation failed: {e}"),
                    }
                }
                (served, shed)
            })
        })
        .collect();
    let mut scrapes = 0;
    let mut last = 0.0;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        // Each scrape must come back whole (the parser checks it) within the 5 s read timeout.
        let entities = tokio::task::block_in_place(|| {
            value(
                &scrape(&proxy),
                "featureproxy_entities_requested_total",
                &[],
            )
        });
        // A counter read under load never goes backwards between scrapes.
        assert!(
            entities >= last,
            "entities_requested went from {last} to {entities}"
        );
        last = entities;
        scrapes += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut served, mut shed) = (0, 0);
    for l in load {
        let (s, d) = l.await.unwrap();
        served += s;
        shed += d;
    }
    assert!(last > 0.0, "the scrapes never saw the load's requests");
    assert!(
        scrapes >= 5,
        "only {scrapes} health checks answered in 2 s under load"
    );
    assert!(served > 0);
    let s = scrape(&proxy);
    assert!(
        value(
            &s,
            "featureproxy_requests_total",
            &[("op", "get"), ("outcome", "ok")]
        ) >= served as f64
    );
    assert_eq!(
        value(&s, "featureproxy_requests_shed_total", &[]),
        shed as f64,
        "every OVERLOADED answer the callers saw is counted as shed, and no other"
    );
}

/// A second proxy started on the address a first one listens on refuses to start and says why.
/// The shards share their port with SO_REUSEPORT, which another process of the same user could
/// join as well: it would silently take part of the first proxy's new connections, and reset
/// the ones waiting in its queue when it stopped.
#[tokio::test]
async fn a_second_proxy_on_a_taken_port_refuses_to_start_and_the_first_serves_on() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 2, "");
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_featureproxy"))
        .arg("serve")
        .arg("--config")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/features.toml"
        ))
        .args(["--listen", &proxy.addr()])
        .args([
            "--stats-listen",
            &format!("127.0.0.1:{}", common::free_port()),
        ])
        .args(["--redis", &redis.url()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its exit, awaited; one that keeps running is killed and fails the test.
    let pid = second.id().to_string();
    let exited = tokio::task::spawn_blocking(move || second.wait_with_output());
    let output = match tokio::time::timeout(Duration::from_secs(20), exited).await {
        Ok(joined) => joined.unwrap().unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status();
            panic!(
                "a second proxy started on {}, which the first holds",
                proxy.addr()
            );
        }
    };
    let (status, stderr) = (output.status, String::from_utf8_lossy(&output.stderr));
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains(&format!("cannot listen on {}", proxy.addr()))
            && stderr.contains("another process already listens there"),
        "the error names the address and why: {stderr}"
    );

    // The first proxy is untouched: every new connection reaches it, on both of its shards.
    let opts = ClientOptions {
        pool_size: 1,
        ..Default::default()
    };
    let mut shards = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let c = Client::connect(proxy.addr(), opts.clone()).await.unwrap();
        shards.insert(c.hello_info().await.unwrap().shard);
        c.ping().await.unwrap();
    }
    assert_eq!(shards.into_iter().collect::<Vec<_>>(), [0, 1]);
}
