//! The operators' endpoint, scraped and parsed with a real Prometheus text parser: counters move
//! by exactly the traffic sent, histograms fill, /stats has percentiles, and the endpoint answers
//! while the proxy is saturated. And signals: SIGHUP, SIGUSR1 and SIGUSR2 are logged and the
//! proxy serves on, SIGTERM drains, and a SIGKILLed proxy takes its private redis-server with it.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, flat_row, now_ms, Proxy, Redis};
use featureproxy_client::{Client, ClientOptions, ErrorCode, Status, Value};

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
    // The client retried some shed GETs (once each, within its budget): their first answers
    // were shed too, unseen by the callers.
    assert_eq!(
        value(&s, "featureproxy_requests_shed_total", &[]),
        (shed + c.overload_retries()) as f64,
        "every OVERLOADED answer, seen by the callers or retried, is counted as shed, and no other"
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

/// Sends signal `sig` to process `pid`.
fn send_signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill takes plain integers.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// (pid, command name, state, parent pid) of every process in /proc.
fn processes() -> Vec<(i32, String, char, i32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ')'.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // gone since the listing
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = rest.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        found.push((pid, stat[open + 1..close].to_string(), state, ppid));
    }
    found
}

/// The process id of `proxy`: the child of this test process started with its listen address.
fn pid_of(proxy: &Proxy) -> i32 {
    let me = std::process::id() as i32;
    let listen = format!("--listen\0{}\0", proxy.addr());
    let pids: Vec<i32> = processes()
        .into_iter()
        .filter(|&(pid, _, _, ppid)| {
            ppid == me
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&listen))
        })
        .map(|(pid, ..)| pid)
        .collect();
    assert_eq!(
        pids.len(),
        1,
        "processes listening on {}: {pids:?}",
        proxy.addr()
    );
    pids[0]
}

/// The log lines (text format) that contain `needle`.
fn lines_with(logs: &str, needle: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// SIGHUP (reload: here of an unchanged file) and SIGUSR1/SIGUSR2 (no meaning) used to kill the
/// proxy at once, without a drain or a word. Now each is logged once and the proxy serves on, the
/// same connection and new ones, with the right rows; SIGTERM still drains and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_logged_once_and_the_proxy_serves_on_then_sigterm_drains() {
    let redis = Redis::start();
    let mut proxy = Proxy::start(&redis, 2, "");
    let pid = pid_of(&proxy);
    let c = Client::connect(proxy.addr(), ClientOptions::default())
        .await
        .unwrap();
    let now = now_ms();
    let rows = [("a", now, flat_row(1.5)), ("b", now, flat_row(2.5))];
    assert_eq!(c.put("user_features", &rows).await.unwrap(), 2);

    send_signal(pid, libc::SIGHUP);
    let hup = eventually(Duration::from_secs(5), "the SIGHUP log line", || {
        lines_with(&proxy.logs(), "\"SIGHUP\"").pop()
    });
    assert!(
        hup.contains("reloaded") && hup.contains("changed: none"),
        "{hup}"
    );
    for (sig, name) in [(libc::SIGUSR1, "SIGUSR1"), (libc::SIGUSR2, "SIGUSR2")] {
        send_signal(pid, sig);
        let line = eventually(Duration::from_secs(5), name, || {
            lines_with(&proxy.logs(), &format!("\"{name}\"")).pop()
        });
        assert!(line.contains("no meaning for featureproxy"), "{line}");
    }

    // Still serving: on the connection opened before the signals and on a new one.
    let fresh = Client::connect(proxy.addr(), ClientOptions::default())
        .await
        .unwrap();
    for client in [&c, &fresh] {
        let b = client
            .get("user_features", &["a", "zzz", "b"])
            .await
            .unwrap();
        let statuses: Vec<Status> = (0..3).map(|i| b.status(i).status).collect();
        assert_eq!(statuses, [Status::Fresh, Status::Missing, Status::Fresh]);
        assert_eq!(b.row(0), flat_row(1.5));
        assert_eq!(b.row(1), vec![Value::F32(0.0); 16], "MISSING: the defaults");
        assert_eq!(b.row(2), flat_row(2.5));
    }
    assert!(proxy.is_running());
    let logs = proxy.logs();
    assert_eq!(
        lines_with(&logs, "SIGHUP").len(),
        1,
        "one line per SIGHUP:\n{logs}"
    );
    assert!(lines_with(&logs, "shutting down").is_empty(), "{logs}");

    drop((c, fresh));
    let status = proxy.stop();
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    let logs = proxy.logs();
    let down = lines_with(&logs, "shutting down");
    assert_eq!(down.len(), 1, "{logs}");
    assert!(down[0].contains("\"SIGTERM\""), "{}", down[0]);
    assert!(
        logs.lines().last().unwrap_or("").contains("stopped"),
        "{logs}"
    );
    assert_eq!(lines_with(&logs, "SIGHUP").len(), 1, "{logs}");
}

/// A process this test started, SIGKILLed if the test fails before it is done with it.
struct Started(Option<std::process::Child>);

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until process `pid` has exited (a zombie counts: it runs no more), at most `limit`;
/// returns how long that took, or None if it still runs. Awaited through a pidfd, which becomes
/// readable when the process exits, whoever its parent is.
fn await_exit(pid: i32, limit: Duration) -> Option<Duration> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let start = Instant::now();
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ESRCH),
            "pidfd_open({pid}): {e}"
        );
        return Some(Duration::ZERO); // already gone and reaped
    }
    // SAFETY: the descriptor was just opened and is owned here alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    loop {
        let left = limit.saturating_sub(start.elapsed());
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis() as libc::c_int) };
        if n > 0 {
            return Some(start.elapsed());
        }
        if n == 0 || left.is_zero() {
            return None;
        }
        // n < 0: EINTR, poll again for what is left.
    }
}

/// The private redis-server (no --redis given) never outlives the proxy: SIGKILL the proxy, which
/// runs no destructor, and the kernel stops its redis-server within a second (PR_SET_PDEATHSIG).
/// Without it the server lived on under PID 1.
#[test]
fn the_private_redis_server_exits_within_a_second_of_a_sigkilled_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (port, stats_port) = (common::free_port(), common::free_port());
    let log = dir.path().join("proxy.log");
    let mut proxy = Started(Some(
        std::process::Command::new(env!("CARGO_BIN_EXE_featureproxy"))
            .arg("serve")
            .arg("--config")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/features.toml"
            ))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--stats-listen", &format!("127.0.0.1:{stats_port}")])
            .args(["--shards", "1", "--log-json"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    ));
    let proxy_pid = proxy.0.as_ref().unwrap().id() as i32;
    common::wait_port(port);

    // The proxy says which redis-server it started; it is the proxy's only child.
    let logs = std::fs::read_to_string(&log).unwrap();
    let started = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("started a private redis-server"))
        })
        .unwrap_or_else(|| panic!("no line about the private redis-server:\n{logs}"));
    let redis_pid = started["fields"]["pid"].as_i64().expect("its pid") as i32;
    let redis_port = started["fields"]["port"].as_u64().expect("its port") as u16;
    let children: Vec<(i32, String)> = processes()
        .into_iter()
        .filter(|&(_, _, _, ppid)| ppid == proxy_pid)
        .map(|(pid, comm, ..)| (pid, comm))
        .collect();
    assert_eq!(children, [(redis_pid, "redis-server".to_string())]);
    assert!(std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_ok());

    let mut child = proxy.0.take().unwrap();
    child.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let exited = await_exit(
        redis_pid,
        Duration::from_secs(1).saturating_sub(killed.elapsed()),
    );
    // What the proxy would have removed on a clean exit.
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("featureproxy-redis-{proxy_pid}")),
    );
    if exited.is_none() {
        send_signal(redis_pid, libc::SIGKILL); // leave nothing behind
        panic!("the private redis-server {redis_pid} still runs 1 s after its proxy was SIGKILLed");
    }
    let state = processes()
        .into_iter()
        .find(|&(pid, ..)| pid == redis_pid)
        .map(|(_, _, state, _)| state);
    assert!(
        matches!(state, None | Some('Z')),
        "redis-server {redis_pid} in state {state:?} after it exited"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_err(),
        "something still accepts connections on the private redis-server's port {redis_port}"
    );
    eprintln!(
        "redis-server exited {:?} after the proxy's SIGKILL",
        killed.elapsed()
    );
}
