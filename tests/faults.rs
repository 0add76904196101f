//! Redis failing under the proxy, for real: killed, frozen with SIGSTOP, restarted. GETs never
//! fail because Redis did: they answer DEGRADED defaults within their deadline.

mod common;

use std::time::{Duration, Instant};

use common::{block, eventually, flat_row, now_ms, Proxy, Redis};
use featureproxy_client::{Client, ClientOptions, Error, ErrorCode, GetOptions, Status, Value};

const FAST_BREAKER: &str =
    "breaker_min_failures = 3\nbreaker_reset_timeout = \"200ms\"\nbreaker_probes = 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_serves_degraded_defaults_then_recovers() {
    let mut redis = Redis::start();
    let proxy = Proxy::start(&redis, 1, FAST_BREAKER);
    let c = Client::connect(proxy.addr(), ClientOptions::default())
        .await
        .unwrap();
    c.put("user_features", &[("u1", now_ms(), flat_row(7.0))])
        .await
        .unwrap();
    // Health follows the connection state within a poll interval.
    eventually(Duration::from_secs(5), "/health 200 with Redis up", || {
        (proxy.http("/health").0 == 200).then_some(())
    });

    redis.kill();
    for _ in 0..10 {
        let t = Instant::now();
        let b = c.get("user_features", &["u1", "u2"]).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "answered in {:?}",
            t.elapsed()
        );
        assert_eq!(b.status(0).status, Status::Degraded);
        assert_eq!(b.status(1).status, Status::Degraded);
        assert_eq!(b.row(0), flat_row(0.0), "defaults, not the stored row");
        assert_eq!(b.age(0), None);
    }
    // A write Redis cannot take is never acknowledged.
    match c
        .put("user_features", &[("u3", now_ms(), flat_row(1.0))])
        .await
    {
        Err(Error::Server {
            code: ErrorCode::BackendUnavailable | ErrorCode::Timeout,
            ..
        }) => {}
        other => panic!("expected BACKEND_UNAVAILABLE or TIMEOUT, got {other:?}"),
    }
    let (code, body) = proxy.http("/health");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("Redis unreachable") || body.contains("breaker open"),
        "{body}"
    );
    assert!(proxy.metric("featureproxy_entities_total", &[("status", "degraded")]) >= 20.0);

    // Redis comes back (empty: it keeps nothing on disk): writes and fresh reads resume.
    redis.restart();
    eventually(
        Duration::from_secs(10),
        "a write after Redis restarted",
        || {
            let c = c.clone();
            let r = block(async move {
                c.put("user_features", &[("u1", now_ms(), flat_row(8.0))])
                    .await
            });
            r.ok()
        },
    );
    let b = c.get("user_features", &["u1"]).await.unwrap();
    assert_eq!(b.status(0).status, Status::Fresh);
    assert_eq!(b.row(0), flat_row(8.0));
    eventually(Duration::from_secs(5), "/health back to 200", || {
        (proxy.http("/health").0 == 200).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_respects_deadlines_and_opens_the_breaker() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 1, FAST_BREAKER);
    let c = Client::connect(proxy.addr(), ClientOptions::default())
        .await
        .unwrap();
    c.put("user_features", &[("u1", now_ms(), flat_row(3.0))])
        .await
        .unwrap();

    redis.freeze();
    let opts = GetOptions {
        bypass_cache: true,
        deadline: Some(Duration::from_millis(30)),
    };
    for _ in 0..5 {
        let t = Instant::now();
        let b = c.get_with("user_features", &["u1"], opts).await.unwrap();
        let took = t.elapsed();
        assert_eq!(b.status(0).status, Status::Degraded);
        assert!(
            took < Duration::from_millis(300),
            "deadline 30ms, answered in {took:?}"
        );
    }
    // Enough timeouts open the breaker: from then on, defaults come at once, without waiting.
    eventually(Duration::from_secs(5), "the breaker to open", || {
        (proxy.metric("featureproxy_breaker_state", &[("shard", "0")]) == 1.0).then_some(())
    });
    let t = Instant::now();
    let b = c
        .get_with(
            "user_features",
            &["u1"],
            // A deadline far beyond the wait: an answer well before it shows the proxy did not
            // wait on Redis at all.
            GetOptions {
                bypass_cache: true,
                deadline: Some(Duration::from_secs(3)),
            },
        )
        .await
        .unwrap();
    assert_eq!(b.status(0).status, Status::Degraded);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "open breaker answered in {:?}",
        t.elapsed()
    );
    assert_eq!(proxy.http("/health").0, 503);
    assert!(
        proxy.logs().contains("circuit breaker opened"),
        "{}",
        proxy.logs()
    );

    redis.thaw();
    // Half-open probes succeed and close it; the stored row is served again.
    let b = eventually(Duration::from_secs(10), "a FRESH read after thaw", || {
        let c = c.clone();
        let b = block(async move { c.get("user_features", &["u1"]).await }).ok()?;
        (b.status(0).status == Status::Fresh).then_some(b)
    });
    assert_eq!(b.row(0), flat_row(3.0));
    assert!(proxy.metric("featureproxy_breaker_transitions_total", &[]) >= 3.0);
    assert!(proxy.logs().contains("circuit breaker closed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_share_redis_reads() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 1, "");
    let c = Client::connect(
        proxy.addr(),
        ClientOptions {
            pool_size: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let rows: Vec<(String, u64, Vec<Value>)> = (0..50)
        .map(|i| (format!("k{i}"), now_ms(), flat_row(i as f32)))
        .collect();
    c.put("user_features", &rows).await.unwrap();
    let commands_before = proxy.metric("featureproxy_redis_commands_total", &[]);

    // 200 GETs of 5 keys each, all in flight at once on one connection.
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let keys: Vec<String> = (0..5).map(|j| format!("k{}", (i + j) % 50)).collect();
                let b = c.get("user_features", &keys).await.unwrap();
                for (j, k) in keys.iter().enumerate() {
                    let want: f32 = k[1..].parse().unwrap();
                    assert_eq!(b.row(j), flat_row(want), "{k}");
                    assert_eq!(b.status(j).status, Status::Fresh);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let commands = proxy.metric("featureproxy_redis_commands_total", &[]) - commands_before;
    let joins = proxy.metric("featureproxy_singleflight_joins_total", &[]);
    let requested = proxy.metric("featureproxy_entities_requested_total", &[]);
    assert_eq!(requested, 1000.0);
    // 1000 entity reads, coalesced: far fewer MGETs than GETs, and duplicates joined.
    assert!(
        commands < 100.0,
        "{commands} Redis commands for 200 concurrent GETs"
    );
    assert!(
        joins > 0.0,
        "no single-flight joins among 1000 reads of 50 keys"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_timed_out_does_not_answer_the_next_one() {
    let redis = Redis::start();
    // The breaker stays closed: the connection (and the late reply on it) is kept.
    let proxy = Proxy::start(&redis, 1, "breaker_min_failures = 1000");
    let c = Client::connect(proxy.addr(), ClientOptions::default())
        .await
        .unwrap();
    c.put(
        "user_features",
        &[
            ("late", now_ms(), flat_row(1.0)),
            ("next", now_ms(), flat_row(2.0)),
        ],
    )
    .await
    .unwrap();
    let opts = |ms| GetOptions {
        bypass_cache: true,
        deadline: Some(Duration::from_millis(ms)),
    };
    redis.freeze();
    let b = c
        .get_with("user_features", &["late"], opts(30))
        .await
        .unwrap();
    assert_eq!(b.status(0).status, Status::Degraded);
    redis.thaw();
    // The reply to the abandoned read comes first on the connection; it must not be taken for
    // the next read's.
    for (key, want) in [("next", 2.0), ("late", 1.0), ("next", 2.0)] {
        let b = c
            .get_with("user_features", &[key], opts(5000))
            .await
            .unwrap();
        assert_eq!(b.status(0).status, Status::Fresh, "{key}");
        assert_eq!(b.row(0), flat_row(want), "{key}");
    }
    assert_eq!(
        proxy.metric("featureproxy_breaker_state", &[("shard", "0")]),
        0.0
    );
}

/// `redis-cli -a PASSWORD -n DB ARGS...`: what an operator sees in that database.
fn cli_in_db(redis: &Redis, password: &str, db: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "-a",
            password,
            "--no-auth-warning",
        ])
        .args(["-n", db])
        .args(args)
        .output()
        .expect("redis-cli must be installed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_s_password_and_database_hold_for_reads_and_writes() {
    let redis = Redis::start_with(&["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}/3", redis.port);
    let proxy = Proxy::start_with(&url, 1, "", &[]);
    let c = Client::connect(proxy.addr(), ClientOptions::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "/health 200 with Redis up", || {
        (proxy.http("/health").0 == 200).then_some(())
    });
    c.put("user_features", &[("u1", now_ms(), flat_row(4.0))])
        .await
        .unwrap();
    // Read from Redis itself (the read connection has its own handshake), not the hot cache.
    let from_redis = GetOptions {
        bypass_cache: true,
        ..GetOptions::default()
    };
    let b = c
        .get_with("user_features", &["u1", "nobody"], from_redis)
        .await
        .unwrap();
    assert_eq!(b.status(0).status, Status::Fresh);
    assert_eq!(b.row(0), flat_row(4.0));
    assert_eq!(b.status(1).status, Status::Missing);
    // The row went to database 3, nothing to database 0.
    assert_eq!(cli_in_db(&redis, "s3cret", "3", &["DBSIZE"]), "1");
    assert_eq!(cli_in_db(&redis, "s3cret", "0", &["DBSIZE"]), "0");

    // A wrong password: nothing is read, every entity gets its defaults, and the log says why.
    let wrong = format!("redis://:nope@127.0.0.1:{}/3", redis.port);
    let mut refused = Proxy::start_with(&wrong, 1, "", &[]);
    let c = Client::connect(refused.addr(), ClientOptions::default())
        .await
        .unwrap();
    let b = c
        .get_with("user_features", &["u1"], from_redis)
        .await
        .unwrap();
    assert_eq!(b.status(0).status, Status::Degraded);
    assert_eq!(b.row(0), flat_row(0.0));
    eventually(Duration::from_secs(5), "the refusal in the log", || {
        let logs = refused.logs();
        (logs.contains("handshake") && logs.contains("WRONGPASS")).then_some(())
    });
    // It retries with backoff, not as fast as Redis refuses, and warns once. (What is checked is
    // that something does not happen over a window, so the window is a sleep.)
    let connections = || -> u64 {
        cli_in_db(&redis, "s3cret", "0", &["INFO", "stats"])
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("INFO stats has total_connections_received")
    };
    let before = connections();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = connections() - before - 1; // less the INFO's own connection
    assert!(
        during <= 8,
        "{during} connections in 2 s from a proxy whose password Redis refuses"
    );
    refused.stop();
    let logs = refused.logs();
    assert_eq!(
        logs.matches("refused the read connection's handshake;")
            .count(),
        1,
        "one warning, however often it retries"
    );
    assert!(!logs.contains("nope"), "the password reached the log");
    assert!(
        logs.contains("redis://:***@127.0.0.1:"),
        "the URL is logged redacted"
    );
}
