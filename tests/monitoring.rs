//! Watching served values (issue 26), end to end: the real binary, a real redis-server, a
//! baseline written by `python -m featureproxy.baseline`, and `/metrics` and `/stats` read over
//! HTTP. The drift test follows the issue: no drift for 15 s, then a step change that must show
//! within 15 s on the features it touched and on no other.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{eventually, now_ms, Proxy, Redis};
use featureproxy_client::{Client, ClientOptions, Status, Value};
use serde_json::Value as Json;

const ENTITIES: usize = 20_000;

/// The Python that has numpy and pandas: $FEATUREPROXY_PYTHON, else python/run-tests.sh's venv,
/// else python3.
fn python() -> String {
    if let Ok(p) = std::env::var("FEATUREPROXY_PYTHON") {
        return p;
    }
    // The Python tests' virtualenv, made or brought up to date once per test process (cargo
    // test runs before python/run-tests.sh, so on a fresh machine it does not exist yet).
    static VENV: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VENV.get_or_init(|| {
        let out = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/python/venv.sh"))
            .output()
            .expect("run python/venv.sh");
        assert!(
            out.status.success(),
            "python/venv.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
    .clone()
}

/// Writes `dir/watched.json` with the baseline helper, from 200k draws of the training
/// distributions (a, b, c ~ N(0,1); d ~ NegBin(2, 1/3): mean 4, 11% zeros).
fn make_baseline(dir: &Path, registry: &Path) {
    let script = r#"
import sys, numpy as np, pandas as pd
from featureproxy import baseline
rng = np.random.default_rng(26)
n = 200_000
pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.normal(size=n),
              "d": rng.negative_binomial(2, 1/3, size=n)}).to_parquet(sys.argv[1] + "/train.parquet")
sys.exit(baseline.main(["--registry", sys.argv[2], "--view", "watched",
    "--data", sys.argv[1] + "/train.parquet", "--out", sys.argv[1] + "/watched.json"]))
"#;
    let out = Command::new(python())
        .env(
            "PYTHONPATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/python/src"),
        )
        .args(["-c", script])
        .arg(dir)
        .arg(registry)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "the baseline helper failed (its Python, with numpy, pandas and pyarrow, comes from python/venv.sh, or FEATUREPROXY_PYTHON): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn watched_view(baseline: Option<&str>, extra: &str) -> String {
    let baseline = baseline.map_or(String::new(), |b| format!("baseline = {b:?}\n"));
    format!(
        r#"
[[view]]
name = "watched"
version = 1
ttl = "1d"
stale_after = "5m"
max_staleness = "10m"
sample_rate = 1.0
{baseline}{extra}features = [
  {{ name = "a", dtype = "f32", default = 0.0 }},
  {{ name = "b", dtype = "f32", default = 0.0 }},
  {{ name = "c", dtype = "f32", default = 0.0 }},
  {{ name = "d", dtype = "i64", default = 0 }},
]
"#
    )
}

/// xorshift64* with normal and negative-binomial draws: the serving side's own randomness.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        (-2.0 * self.unit().ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
    /// Failures before the 2nd success at p = 1/3: two geometric draws.
    fn negbin(&mut self) -> i64 {
        (0..2)
            .map(|_| (self.unit().ln() / (2.0f64 / 3.0).ln()) as i64)
            .sum()
    }
}

type Row = (String, u64, Vec<Value>);

fn rows(rng: &mut Rng, shift_a: f64, d_zero: f64, c_zero: f64) -> Vec<Row> {
    (0..ENTITIES)
        .map(|i| {
            let a = rng.normal() + shift_a;
            let b = rng.normal();
            let mut c = rng.normal();
            let mut d = rng.negbin();
            if rng.unit() < d_zero {
                d = 0;
            }
            if rng.unit() < c_zero {
                c = 0.0;
            }
            let values = vec![
                Value::F32(a as f32),
                Value::F32(b as f32),
                Value::F32(c as f32),
                Value::I64(d),
            ];
            (format!("e{i}"), now_ms(), values)
        })
        .collect()
}

async fn put_all(c: &Client, rows: &[Row]) {
    for chunk in rows.chunks(1000) {
        assert_eq!(c.put("watched", chunk).await.unwrap(), chunk.len() as u32);
    }
}

/// One GET of 100 random entities, all FRESH.
async fn get_some(c: &Client, rng: &mut Rng) {
    let keys: Vec<String> = (0..100)
        .map(|_| format!("e{}", (rng.unit() * ENTITIES as f64) as usize % ENTITIES))
        .collect();
    let batch = c.get("watched", &keys).await.unwrap();
    for i in 0..batch.len() {
        assert_eq!(batch.status(i).status, Status::Fresh);
    }
}

/// Per feature of view `watched`: (psi if published, zero ratio, baseline zero ratio).
fn scores(p: &Proxy) -> std::collections::BTreeMap<String, (Option<f64>, f64, f64)> {
    let (_, body) = p.http("/metrics");
    let mut out = std::collections::BTreeMap::new();
    for f in ["a", "b", "c", "d"] {
        let find = |name: &str| {
            let series = format!("{name}{{view=\"watched\",feature=\"{f}\"}} ");
            body.lines()
                .find_map(|l| l.strip_prefix(&series))
                .map(|v| v.parse::<f64>().unwrap())
        };
        out.insert(
            f.to_string(),
            (
                find("featureproxy_feature_psi"),
                find("featureproxy_feature_zero_ratio").unwrap_or(0.0),
                find("featureproxy_feature_baseline_zero_ratio").unwrap_or(0.0),
            ),
        );
    }
    out
}

fn psi(s: &std::collections::BTreeMap<String, (Option<f64>, f64, f64)>, f: &str) -> f64 {
    s[f].0.unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_shows_on_the_features_a_step_change_touched_and_on_no_other() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.toml");
    std::fs::write(&registry, watched_view(None, "")).unwrap();
    make_baseline(dir.path(), &registry);
    let baseline = dir.path().join("watched.json");
    let p = Proxy::start_custom(
        &redis.url(),
        2,
        "value_window = \"10s\"",
        &watched_view(Some(baseline.to_str().unwrap()), ""),
        &[],
    );
    let c = Client::connect(p.addr(), ClientOptions::default())
        .await
        .unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    put_all(&c, &rows(&mut rng, 0.0, 0.0, 0.0)).await;

    // Phase 1: the baseline's distributions, ~2,000 entities a second for 15 s.
    let start = Instant::now();
    let mut published = false;
    let mut max_psi = 0.0f64;
    while start.elapsed() < Duration::from_secs(15) {
        for _ in 0..10 {
            get_some(&c, &mut rng).await;
        }
        let s = scores(&p);
        for f in ["a", "b", "c", "d"] {
            assert!(psi(&s, f) < 0.05, "phase 1, no drift: {f} {s:?}");
            max_psi = max_psi.max(psi(&s, f));
        }
        published = s.values().all(|v| v.0.is_some());
        tokio::time::sleep(Duration::from_millis(450)).await;
    }
    assert!(published, "every feature's PSI is published after 15 s");
    eprintln!("phase 1: highest PSI of a, b, c, d over 15 s: {max_psi:.4}");
    let (_, stats) = p.http("/stats");
    let stats: Json = serde_json::from_str(&stats).unwrap();
    let view = &stats["values"][0];
    assert_eq!(view["view"], "watched");
    assert!(view["window_sampled"].as_u64().unwrap() >= 10_000, "{view}");
    assert_eq!(
        view["baseline"]["sha256"].as_str().unwrap().len(),
        64,
        "{view}"
    );

    // Phase 2: a shifted by 1 sd, d zero for 30% of entities, c zero for 10%, b as before.
    put_all(&c, &rows(&mut rng, 1.0, 0.3, 0.1)).await;
    let changed = Instant::now();
    let mut seen = [false; 3];
    while !seen.iter().all(|&s| s) {
        assert!(
            changed.elapsed() < Duration::from_secs(15),
            "within 15 s of the change: a, d drift {:?}, c's zero share {:?}: {:?}",
            &seen[..2],
            seen[2],
            scores(&p)
        );
        for _ in 0..10 {
            get_some(&c, &mut rng).await;
        }
        let s = scores(&p);
        assert!(psi(&s, "b") < 0.05, "b never drifts: {s:?}");
        assert!(
            psi(&s, "c") < 0.2,
            "c's fill is not a drift PSI sees: {s:?}"
        );
        let now = [
            psi(&s, "a") > 0.2,
            psi(&s, "d") > 0.2,
            s["c"].1 - s["c"].2 > 0.05,
        ];
        for (i, what) in ["a drifts", "d drifts", "c's zero share is up 5 points"]
            .iter()
            .enumerate()
        {
            if now[i] && !seen[i] {
                eprintln!(
                    "phase 2: {what} {:?} after the change: {s:?}",
                    changed.elapsed()
                );
            }
            seen[i] |= now[i];
        }
        tokio::time::sleep(Duration::from_millis(450)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_is_counted_and_served_or_answered_invalid_as_the_view_says() {
    let redis = Redis::start();
    let serve = watched_view(None, "non_finite = \"serve\"\n").replace("\"watched\"", "\"serve\"");
    let registry = format!("{serve}{}", watched_view(None, ""));
    let p = Proxy::start_custom(&redis.url(), 1, "", &registry, &[]);
    let c = Client::connect(p.addr(), ClientOptions::default())
        .await
        .unwrap();
    let nan = vec![
        Value::F32(f32::NAN),
        Value::F32(1.0),
        Value::F32(f32::INFINITY),
        Value::I64(3),
    ];
    for view in ["serve", "watched"] {
        c.put(view, &[("n1", now_ms(), nan.clone())]).await.unwrap();
    }
    let served = c.get("serve", &["n1"]).await.unwrap();
    assert_eq!(served.status(0).status, Status::Fresh);
    assert!(matches!(served.value(0, "a"), Some(Value::F32(x)) if x.is_nan()));
    assert_eq!(served.value(0, "b"), Some(Value::F32(1.0)));
    let refused = c.get("watched", &["n1"]).await.unwrap();
    assert_eq!(refused.status(0).status, Status::Invalid);
    assert_eq!(refused.value(0, "b"), Some(Value::F32(0.0)), "the defaults");

    // Counted per feature, either way: a (NaN) and c (inf), not b or d. Shipped each second.
    for view in ["serve", "watched"] {
        eventually(Duration::from_secs(5), "non-finite counts", || {
            let n = |f: &str| {
                p.metric(
                    "featureproxy_feature_nonfinite_total",
                    &[("view", view), ("feature", f)],
                )
            };
            (n("a") == 1.0 && n("c") == 1.0).then_some(())
        });
        for f in ["b", "d"] {
            let n = p.metric(
                "featureproxy_feature_nonfinite_total",
                &[("view", view), ("feature", f)],
            );
            assert_eq!(n, 0.0, "{view}.{f}");
        }
    }
    // The served NaN row was sampled (rate 1.0); /stats has every statistic but drift.
    let values = eventually(Duration::from_secs(5), "the sample in /stats", || {
        let (_, body) = p.http("/stats");
        let stats: Json = serde_json::from_str(&body).unwrap();
        let v = stats["values"][0].clone();
        (v["window_sampled"].as_u64() >= Some(1)).then_some(v)
    });
    let a = &values["features"][0];
    assert_eq!(a["window"]["nan"], 1, "{a}");
    assert_eq!(a["window"]["psi"], Json::Null);
    assert_eq!(a["psi_absent"], "no baseline for this feature");
    assert_eq!(values["features"][1]["window"]["mean"], 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baseline_that_does_not_fit_is_refused_at_start_and_on_reload() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.toml");
    std::fs::write(&registry, watched_view(None, "")).unwrap();
    make_baseline(dir.path(), &registry);
    let path = dir.path().join("watched.json");
    let good = std::fs::read_to_string(&path).unwrap();

    // At start (featureproxy check reads as serve does): each problem named.
    let bad = dir.path().join("bad.json");
    let mut broken: Json = serde_json::from_str(&good).unwrap();
    broken["views"]["watched"]["features"]["d"]["edges"]
        .as_array_mut()
        .unwrap()
        .pop();
    let cases = [
        (
            good.replace("\"b\":", "\"zz\":"),
            "feature \"zz\": the view has no such feature",
        ),
        (broken.to_string(), "feature \"d\": "),
        ("{\"version\": 1,".to_string(), "is not a baseline file"),
    ];
    for (text, want) in cases {
        std::fs::write(&bad, &text).unwrap();
        std::fs::write(&registry, watched_view(Some(bad.to_str().unwrap()), "")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_featureproxy"))
            .args(["check", "--config"])
            .arg(&registry)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("view \"watched\": baseline") && err.contains(want),
            "{want:?} in {err}"
        );
    }

    // On reload: refused whole, the baseline in force stays.
    let p = Proxy::start_custom(
        &redis.url(),
        1,
        "",
        &watched_view(Some(path.to_str().unwrap()), ""),
        &[],
    );
    let sha = |p: &Proxy| {
        let (_, body) = p.http("/stats");
        let stats: Json = serde_json::from_str(&body).unwrap();
        stats["values"][0]["baseline"]["sha256"].clone()
    };
    let before = sha(&p);
    let config = std::fs::read_to_string(p.config_path()).unwrap();
    std::fs::write(&path, good.replace("\"c\":", "\"zz\":")).unwrap();
    p.sighup();
    p.wait_reloads("refused", 1.0);
    assert!(p.logs().contains("feature \\\"zz\\\"") || p.logs().contains("feature \"zz\""));
    assert_eq!(sha(&p), before);
    // A fixed file is taken on the next reload.
    let mut edited: Json = serde_json::from_str(&good).unwrap();
    edited["source"] = Json::from("edited");
    std::fs::write(&path, edited.to_string()).unwrap();
    std::fs::write(p.config_path(), config).unwrap();
    p.sighup();
    p.wait_reloads("applied", 1.0);
    assert_ne!(sha(&p), before);
}
