//! The engine end to end against the in-process echo servers: the schedule is kept, every request
//! is answered once, and statuses, errors and the timeline add up.

use std::sync::Arc;
use std::time::Duration;

use loadgen::driver::{run, Proto, RunConfig};
use loadgen::report::Report;
use loadgen::selftest::start_echo;
use loadgen::spec::{BatchSpec, Slo, Target};
use loadgen::workload::Workload;

fn config(target: Target, proto: Proto, rate: Option<f64>, batch: BatchSpec) -> RunConfig {
    RunConfig {
        target,
        tls: None,
        view: "echo".into(),
        proto,
        workload: Arc::new(Workload::new(10_000, 0.99, 3, batch, 0.0, None).unwrap()),
        key_prefix: b"u:".to_vec(),
        rate,
        burst: None,
        connections: 2,
        inflight: 16,
        threads: 1,
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
        verify_every: 0,
        progress: false,
        server_pids: Vec::new(),
    }
}

fn fp() -> Proto {
    Proto::Fp {
        view_id: 1,
        schema_id: 0,
        get_flags: 0,
        deadline_us: 0,
        dtypes: Vec::new(),
        token: String::new(),
    }
}

#[test]
fn open_loop_keeps_its_schedule() {
    let (fp_addr, resp_addr) = start_echo().unwrap();
    for (target, proto) in [
        (Target::Proxy(fp_addr.to_string()), fp()),
        (
            Target::Resp(resp_addr.to_string()),
            Proto::Resp {
                redis_prefix: b"fp:v:v1:".to_vec(),
            },
        ),
    ] {
        let cfg = config(target, proto, Some(2000.0), BatchSpec { min: 1, max: 5 });
        let m = run(cfg.clone()).unwrap();
        // 1 s at 2000/s: 2000 measured requests, each answered once.
        assert!((1990..=2010).contains(&m.sends), "sends {}", m.sends);
        assert_eq!(m.responses, m.sends, "{:?}", m.errors);
        assert_eq!(m.error_count(), 0, "{:?}", m.errors);
        assert!((1990..=2010).contains(&m.hist.len()), "{}", m.hist.len());
        // 1..=5 entities per request, every one of them a hit.
        let mean = m.entities as f64 / m.responses as f64;
        assert!((2.7..3.3).contains(&mean), "mean batch {mean}");
        assert_eq!(m.statuses[0], m.entities);
        let per_sec: u64 = m.seconds.iter().map(|s| s.responses).sum();
        assert_eq!(per_sec, m.responses);
        let r = Report::new(
            "t".into(),
            cfg,
            m,
            Some(&("errors=0".into(), Slo::parse("errors=0").unwrap())),
        );
        assert_eq!(r.slo_passed(), Some(true));
        assert!(r.json().contains("\"achieved_rps\""));
        assert!(r.svg().starts_with("<svg"));
        assert!(r.text().contains("top 1%"));
    }
}

#[test]
fn closed_loop_and_connection_failures() {
    let (fp_addr, _) = start_echo().unwrap();
    let cfg = config(
        Target::Proxy(fp_addr.to_string()),
        fp(),
        None,
        BatchSpec { min: 1, max: 1 },
    );
    let m = run(cfg).unwrap();
    assert!(m.responses > 1000, "{}", m.responses);
    assert_eq!(m.error_count(), 0, "{:?}", m.errors);

    // Nothing listens: the run fails up front with the address in the message.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(
        Target::Resp(format!("127.0.0.1:{port}")),
        Proto::Resp {
            redis_prefix: Vec::new(),
        },
        Some(100.0),
        BatchSpec { min: 1, max: 1 },
    );
    let err = run(cfg).unwrap_err();
    assert!(err.contains(&port.to_string()), "{err}");
}

#[test]
fn server_cpu_is_sampled_over_the_measured_window() {
    // The echo server runs in this process, so this process is the server to charge.
    let (fp_addr, _) = start_echo().unwrap();
    let mut cfg = config(
        Target::Proxy(fp_addr.to_string()),
        fp(),
        Some(2000.0),
        BatchSpec { min: 1, max: 5 },
    );
    cfg.server_pids = vec![std::process::id()];
    let m = run(cfg.clone()).unwrap();
    assert_eq!(m.server_cpu.len(), 1);
    let c = &m.server_cpu[0];
    assert_eq!(c.pid, std::process::id());
    let cpu = c.cpu_s.clone().unwrap();
    assert!(cpu > 0.0 && cpu.is_finite(), "cpu {cpu}");
    // The samples bracket the 1 s window (the main thread wakes for each).
    assert!((0.95..1.5).contains(&c.window_s), "window {}", c.window_s);
    assert!(m.in_window_entities >= m.in_window, "{m:?}");
    let r = Report::new("t".into(), cfg, m, None);
    let (_, req, ent) = r.server_cpu()[0];
    let (req, ent) = (req.unwrap(), ent.unwrap());
    assert!(
        req > 0.0 && req.is_finite() && ent > 0.0 && ent < req,
        "{req} {ent}"
    );
    assert!(r.text().contains("server cpu  "), "{}", r.text());
    assert!(
        r.json().contains("\"server_cpu\": [{\"pid\": "),
        "{}",
        r.json()
    );
    assert!(r.tsv_row().contains(&format!(":{}=", std::process::id())));
}

#[test]
fn server_cpu_of_a_process_that_exits_or_never_was() {
    let (fp_addr, _) = start_echo().unwrap();
    let mut cfg = config(
        Target::Proxy(fp_addr.to_string()),
        fp(),
        Some(500.0),
        BatchSpec { min: 1, max: 1 },
    );
    // Exits 0.7 s in: the middle of the window (0.2 s warm-up, then 1 s measured), so a slow
    // start or a slow end of the run still leaves it alive at the first sample and gone at the
    // last; unreaped until the end.
    let mut child = std::process::Command::new("sleep")
        .arg("0.7")
        .spawn()
        .unwrap();
    cfg.server_pids = vec![std::process::id(), child.id()];
    let m = run(cfg.clone()).unwrap();
    let _ = child.wait();
    assert!(m.server_cpu[0].cpu_s.is_ok());
    let gone = m.server_cpu[1].cpu_s.clone().unwrap_err();
    assert!(gone.contains("exited during the run"), "{gone}");
    let r = Report::new("t".into(), cfg.clone(), m, None);
    assert!(r.server_cpu_total().is_none());
    let text = r.text();
    assert!(text.contains("exited during the run"), "{text}");
    assert!(text.contains("total: n/a"), "{text}");
    assert!(r
        .json()
        .contains("\"server_cpu_us_per_request_total\": null"));

    // A pid that is not there fails the run up front, naming it.
    cfg.server_pids = vec![child.id()];
    let err = run(cfg).unwrap_err();
    assert!(err.contains(&child.id().to_string()), "{err}");
}
