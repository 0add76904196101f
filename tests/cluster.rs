//! The proxy on a real local Redis Cluster (3 masters + 3 replicas, started by the test): rows
//! round-trip across every master; a killed or frozen master degrades only its own keys (at the
//! proxy's default 50 ms deadline, under concurrent GETs whose reads share batches) and
//! they come back without a proxy restart; replicas serve reads with `replica_preferred`; a
//! write behind the proxy reaches every shard's cache.

mod common;

/// Six redis-servers per test on a 2-core machine: one cluster at a time, so that load alone
/// never makes a node miss its 1 s node timeout (a false failover).
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{block, eventually, flat_row, now_ms, Proxy};
use featureproxy_client::{Client, ClientOptions, GetOptions, Status, Value};

/// The packed key of a user_features entity: where the cluster hashes it.
fn store_key(entity: &str) -> Vec<u8> {
    format!("fp:user_features:v1:{entity}").into_bytes()
}

/// Entities `e0..e{n}`, grouped by the port of the master that owns each.
fn by_master(cluster: &Cluster, n: usize) -> BTreeMap<u16, Vec<String>> {
    let mut out: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for i in 0..n {
        let e = format!("e{i}");
        out.entry(cluster.port_for_key(&store_key(&e)))
            .or_default()
            .push(e);
    }
    out
}

async fn client(proxy: &Proxy, pool: usize) -> Client {
    let opts = ClientOptions {
        pool_size: pool,
        ..Default::default()
    };
    Client::connect(proxy.addr(), opts).await.unwrap()
}

/// From Redis, with a deadline that a busy 2-core machine meets for a batch that spans ~250
/// slots (one MGET each): these tests are about what is served, not how fast.
const BYPASS: GetOptions = GetOptions {
    bypass_cache: true,
    deadline: Some(Duration::from_secs(2)),
};

/// From the hot cache when it holds the row, with the same patient deadline.
const CACHED: GetOptions = GetOptions {
    bypass_cache: false,
    deadline: Some(Duration::from_secs(2)),
};

async fn put_all(c: &Client, entities: &[String], value: impl Fn(usize) -> f32, at: u64) {
    for chunk in entities.chunks(500).enumerate() {
        let (n, chunk) = chunk;
        let rows: Vec<(&str, u64, Vec<Value>)> = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| (e.as_str(), at, flat_row(value(n * 500 + i))))
            .collect();
        assert_eq!(
            c.put("user_features", &rows).await.unwrap() as usize,
            chunk.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rows_round_trip_across_every_master() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start();
    let proxy = Proxy::start_with(&cluster.seed_url(), 2, "", &[]);
    let c = client(&proxy, 4).await;
    let entities: Vec<String> = (0..10_000).map(|i| format!("e{i}")).collect();
    let before: Vec<u64> = cluster
        .masters()
        .iter()
        .map(|&m| cluster.info_commandstats(m, "mget"))
        .collect();
    put_all(&c, &entities, |i| i as f32, now_ms()).await;
    for (n, chunk) in entities.chunks(256).enumerate() {
        let keys: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let got = c.get_with("user_features", &keys, BYPASS).await.unwrap();
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(got.status(i).status, Status::Fresh, "{key}");
            assert_eq!(got.row(i)[0], Value::F32((n * 256 + i) as f32), "{key}");
        }
    }
    // Every master served reads, and each key was asked where it lives (no CROSSSLOT, no MOVED).
    for (m, b) in cluster.masters().iter().zip(before) {
        assert!(
            cluster.info_commandstats(*m, "mget") > b + 100,
            "master {m} served no MGETs"
        );
    }
    assert_eq!(
        proxy.metric("featureproxy_cluster_redirects_total", &[("kind", "moved")]),
        0.0
    );
    assert_eq!(
        proxy.metric(
            "featureproxy_redis_errors_total",
            &[("kind", "unavailable")]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reaches_each_master_in_one_write_not_one_per_slot() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start();
    let proxy = Proxy::start_with(&cluster.seed_url(), 1, "", &[]);
    let c = client(&proxy, 1).await;
    let entities: Vec<String> = (0..256).map(|i| format!("batch-{i}")).collect();
    put_all(&c, &entities, |i| i as f32, now_ms()).await;
    let keys: Vec<&str> = entities.iter().map(String::as_str).collect();
    let masters = cluster.masters();
    let slots_on = |m: u16| {
        let slots: std::collections::BTreeSet<u16> = entities
            .iter()
            .filter(|e| cluster.port_for_key(&store_key(e)) == m)
            .map(|e| cluster.slot_of(&store_key(e)))
            .collect();
        slots.len() as u64
    };
    let counters = || -> Vec<(u64, u64)> {
        masters
            .iter()
            .map(|&m| {
                (
                    cluster.info_stat(m, "total_reads_processed"),
                    cluster.info_commandstats(m, "mget"),
                )
            })
            .collect()
    };
    const GETS: u64 = 10;
    let before = counters();
    for _ in 0..GETS {
        let got = c.get_with("user_features", &keys, BYPASS).await.unwrap();
        for (i, key) in keys.iter().enumerate() {
            let served = (got.status(i).status, got.row(i)[0]);
            assert_eq!(served, (Status::Fresh, Value::F32(i as f32)), "{key}");
        }
    }
    let after = counters();
    for ((&m, (r0, g0)), (r1, g1)) in masters.iter().zip(before).zip(after) {
        let (reads, mgets, slots) = (r1 - r0, g1 - g0, slots_on(m));
        eprintln!(
            "master {m}: {slots} slots per GET; {mgets} MGETs in {reads} reads for {GETS} GETs"
        );
        // Still one MGET per slot (Redis refuses one across slots) ...
        assert_eq!(mgets, slots * GETS, "master {m}");
        // ... but all of a GET's MGETs for this master arrive together: one socket read per GET,
        // give or take one that a large write splits, and the INFO calls of this test.
        assert!(
            reads <= 2 * GETS + 2,
            "master {m}: {reads} reads for {GETS} GETs of {slots} slots each"
        );
    }
}

/// Moves `slot` from master `from` to master `to` as `redis-cli --cluster reshard` does: the
/// slot's keys MIGRATEd, then every master told the slot's new owner. The proxy is not told.
fn move_slot(cluster: &Cluster, slot: u16, from: u16, to: u16) {
    let slot_arg = slot.to_string();
    let ok = |port: u16, args: &[&[u8]]| {
        let reply = cluster.call(port, args).text();
        assert_eq!(
            reply,
            "OK",
            "{port}: {:?}",
            String::from_utf8_lossy(&args.concat())
        );
    };
    let (from_id, to_id) = (cluster.node_id(from), cluster.node_id(to));
    ok(
        to,
        &[
            b"CLUSTER",
            b"SETSLOT",
            slot_arg.as_bytes(),
            b"IMPORTING",
            from_id.as_bytes(),
        ],
    );
    ok(
        from,
        &[
            b"CLUSTER",
            b"SETSLOT",
            slot_arg.as_bytes(),
            b"MIGRATING",
            to_id.as_bytes(),
        ],
    );
    let keys = cluster.call(
        from,
        &[b"CLUSTER", b"GETKEYSINSLOT", slot_arg.as_bytes(), b"1000"],
    );
    let keys: Vec<Vec<u8>> = keys.items().iter().map(|k| k.text().into_bytes()).collect();
    if !keys.is_empty() {
        let port = to.to_string();
        let mut args: Vec<&[u8]> = vec![
            b"MIGRATE",
            b"127.0.0.1",
            port.as_bytes(),
            b"",
            b"0",
            b"5000",
            b"KEYS",
        ];
        args.extend(keys.iter().map(Vec::as_slice));
        ok(from, &args);
    }
    for m in cluster.masters() {
        ok(
            m,
            &[
                b"CLUSTER",
                b"SETSLOT",
                slot_arg.as_bytes(),
                b"NODE",
                to_id.as_bytes(),
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_slot_is_followed_and_only_its_commands_are_sent_again() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start();
    let proxy = Proxy::start_with(&cluster.seed_url(), 1, "", &[]);
    let c = client(&proxy, 1).await;
    let groups = by_master(&cluster, 300);
    let all: Vec<String> = groups.values().flatten().cloned().collect();
    put_all(&c, &all, |i| i as f32, now_ms()).await;
    let value_of: BTreeMap<&str, f32> = all
        .iter()
        .enumerate()
        .map(|(i, e)| (e.as_str(), i as f32))
        .collect();
    let masters = cluster.masters();
    let (from, to) = (masters[0], masters[1]);
    let moved = || proxy.metric("featureproxy_cluster_redirects_total", &[("kind", "moved")]);
    // The proxy reads the slot map every second: a GET right after a move usually meets the old
    // map. Each try moves another slot until a GET has met (and followed) a MOVED.
    for (n, entity) in groups[&from].iter().take(5).enumerate() {
        let slot = cluster.slot_of(&store_key(entity));
        move_slot(&cluster, slot, from, to);
        // The moved entity, two more of its old master, two of each other master.
        let mut keys: Vec<&str> = vec![entity.as_str()];
        for m in &masters {
            keys.extend(
                groups[m]
                    .iter()
                    .filter(|e| cluster.slot_of(&store_key(e)) != slot)
                    .skip(10)
                    .take(2)
                    .map(String::as_str),
            );
        }
        let calls_before: Vec<u64> = masters
            .iter()
            .map(|&m| cluster.info_commandstats(m, "mget"))
            .collect();
        let moved_before = moved();
        let opts = GetOptions {
            bypass_cache: true,
            deadline: None,
        };
        let got = c.get_with("user_features", &keys, opts).await.unwrap();
        for (i, key) in keys.iter().enumerate() {
            let served = (got.status(i).status, got.row(i)[0]);
            assert_eq!(
                served,
                (Status::Fresh, Value::F32(value_of[key])),
                "try {n}: {key}"
            );
        }
        if moved() == moved_before {
            continue;
        }
        // Every key was asked once where the old map said (the moved slot's MGET refused, so not
        // a call there), and the moved slot's MGET alone was sent again, to its new master.
        let slots_asked = |m: u16| {
            let mut slots: Vec<u16> = keys
                .iter()
                .filter(|e| {
                    cluster.port_for_key(&store_key(e)) == m || (m == from && **e == entity)
                })
                .map(|e| cluster.slot_of(&store_key(e)))
                .collect();
            slots.sort_unstable();
            slots.dedup();
            slots.len() as u64
        };
        for (&m, before) in masters.iter().zip(calls_before) {
            let calls = cluster.info_commandstats(m, "mget") - before;
            let expected = match m {
                m if m == from => slots_asked(from) - 1,
                m if m == to => slots_asked(to),
                m => slots_asked(m),
            };
            assert_eq!(calls, expected, "try {n}: MGETs served by {m}");
        }
        return;
    }
    panic!("five slots moved and no GET met a MOVED: the proxy read the new map first each time");
}

/// GETs of every entity, again and again, until `done` says stop; returns, per master port, how
/// many answers were DEGRADED, and asserts that every GET was answered within its deadline.
async fn hammer(
    c: &Client,
    groups: &BTreeMap<u16, Vec<String>>,
    mut done: impl FnMut(&BTreeMap<u16, Vec<Status>>) -> bool,
) -> BTreeMap<u16, usize> {
    let mut degraded: BTreeMap<u16, usize> = groups.keys().map(|&p| (p, 0)).collect();
    // The proxy's default deadline (50 ms): the GET carries none.
    let deadline = Duration::from_millis(50);
    let opts = GetOptions {
        bypass_cache: true,
        deadline: None,
    };
    loop {
        let mut last = BTreeMap::new();
        for (&port, entities) in groups {
            let keys: Vec<&str> = entities.iter().map(String::as_str).collect();
            let started = Instant::now();
            let got = c.get_with("user_features", &keys, opts).await.unwrap();
            // The deadline, and 20 ms for the reply to reach the caller.
            assert!(
                started.elapsed() < deadline + Duration::from_millis(20),
                "a GET took {:?}",
                started.elapsed()
            );
            let statuses: Vec<Status> = (0..keys.len()).map(|i| got.status(i).status).collect();
            *degraded.get_mut(&port).unwrap() +=
                statuses.iter().filter(|s| **s == Status::Degraded).count();
            last.insert(port, statuses);
        }
        if done(&last) {
            return degraded;
        }
    }
}

/// What concurrent callers saw while a master failed: keys of the healthy masters and of the
/// failed one, served FRESH or DEGRADED, and the slowest GET.
#[derive(Debug, Default, Clone)]
struct Seen {
    gets: usize,
    healthy_fresh: usize,
    healthy_not_fresh: usize,
    victim_fresh: usize,
    victim_degraded: usize,
    slowest: Duration,
}

impl Seen {
    fn add(&mut self, other: &Seen) {
        self.gets += other.gets;
        self.healthy_fresh += other.healthy_fresh;
        self.healthy_not_fresh += other.healthy_not_fresh;
        self.victim_fresh += other.victim_fresh;
        self.victim_degraded += other.victim_degraded;
        self.slowest = self.slowest.max(other.slowest);
    }
}

/// GETs at the proxy's default deadline from `callers` concurrent callers (so that their reads
/// share coalesced batches), until `stop`: each caller alternates a GET of 40 keys mixing every
/// master and a GET of 40 keys of the healthy masters only. Every answer is checked: a healthy
/// master's key is FRESH with its row, the victim's key FRESH with its row or DEGRADED with the
/// defaults. `fresh_again` is set to when a caller first saw every victim key of a mixed GET
/// FRESH (the answer's arrival), unless already set.
async fn callers(
    c: &Client,
    groups: &BTreeMap<u16, Vec<String>>,
    victim: u16,
    stop: &std::sync::atomic::AtomicBool,
    fresh_again: &std::sync::Mutex<Option<Instant>>,
) -> Seen {
    use std::sync::atomic::Ordering::Relaxed;
    // Default deadline: the GET carries none and the proxy applies its 50 ms.
    let opts = GetOptions {
        bypass_cache: true,
        deadline: None,
    };
    let healthy: Vec<&String> = groups
        .iter()
        .filter(|(p, _)| **p != victim)
        .flat_map(|(_, e)| e)
        .collect();
    let (healthy, on_victim) = (&healthy, &|e: &str| groups[&victim].iter().any(|v| v == e));
    let caller = |k: usize| async move {
        let mut seen = Seen::default();
        let mut round = k * 7;
        while !stop.load(Relaxed) {
            round += 1;
            // 40 keys spread over every master; then 40 of the healthy masters only.
            let mixed: Vec<&str> = (0..40)
                .map(|i| {
                    let g: Vec<&Vec<String>> = groups.values().collect();
                    let list = g[i % g.len()];
                    list[(round * 13 + i) % list.len()].as_str()
                })
                .collect();
            let only_healthy: Vec<&str> = (0..40)
                .map(|i| healthy[(round * 17 + i) % healthy.len()].as_str())
                .collect();
            for keys in [mixed, only_healthy] {
                let started = Instant::now();
                let got = c.get_with("user_features", &keys, opts).await.unwrap();
                seen.slowest = seen.slowest.max(started.elapsed());
                seen.gets += 1;
                let mut victim_all_fresh = true;
                let mut victims = 0;
                for (i, key) in keys.iter().enumerate() {
                    let (status, row) = (got.status(i).status, got.row(i));
                    if on_victim(key) {
                        victims += 1;
                        match status {
                            Status::Fresh => {
                                assert_eq!(row[0], Value::F32(1.0), "{key}");
                                seen.victim_fresh += 1;
                            }
                            Status::Degraded => {
                                assert_eq!(row, flat_row(0.0), "{key}: DEGRADED serves defaults");
                                seen.victim_degraded += 1;
                                victim_all_fresh = false;
                            }
                            other => panic!("{key} on the failed master: {other:?}"),
                        }
                    } else if status == Status::Fresh {
                        assert_eq!(row[0], Value::F32(1.0), "{key}");
                        seen.healthy_fresh += 1;
                    } else {
                        seen.healthy_not_fresh += 1;
                    }
                }
                if victims > 0 && victim_all_fresh {
                    fresh_again.lock().unwrap().get_or_insert_with(Instant::now);
                }
            }
        }
        seen
    };
    let mut all = Seen::default();
    for seen in futures::future::join_all((0..4).map(caller)).await {
        all.add(&seen);
    }
    all
}

/// Kills (or freezes for at least 3 s) a master under concurrent GETs at the default deadline,
/// on 2 shards, and checks the failure domain: the healthy masters' keys are FRESH in every
/// answer, the failed master's DEGRADED with defaults, every answer in time; after the
/// promotion (and the thaw) every key is FRESH again.
async fn a_failed_master_degrades_only_its_own_keys(freeze: bool) {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start();
    let proxy = Proxy::start_with(&cluster.seed_url(), 2, "", &[]);
    let c = client(&proxy, 4).await;
    let groups = by_master(&cluster, 300);
    let all: Vec<String> = groups.values().flatten().cloned().collect();
    put_all(&c, &all, |_| 1.0, now_ms()).await;
    let victim = *groups.keys().next().unwrap();
    let heir = cluster.replica_of(victim);
    let victim_addr = format!("127.0.0.1:{victim}");
    let up = |addr: &str, role: &str| {
        proxy.metric(
            "featureproxy_cluster_node_up",
            &[("node", addr), ("role", role)],
        )
    };
    // The node gauges (one per shard) follow their connections within 100 ms.
    eventually(
        Duration::from_secs(5),
        "the victim to show as a connected primary on both shards",
        || (up(&victim_addr, "primary") == 2.0).then_some(()),
    );
    let keys_on_victim = proxy.metric(
        "featureproxy_cluster_node_keys_total",
        &[("node", &victim_addr)],
    );
    assert_eq!(
        keys_on_victim,
        groups[&victim].len() as f64,
        "the PUT's rows counted on their node"
    );
    eventually(
        Duration::from_secs(5),
        "/health to be 200 before the fault",
        || (proxy.http("/health").0 == 200).then_some(()),
    );

    let failed_at = Instant::now();
    if freeze {
        cluster.freeze(victim);
    } else {
        cluster.kill(victim);
    }
    let (stop, fresh_again) = (AtomicBool::new(false), std::sync::Mutex::new(None));
    let watch = async {
        let mut promoted_at = None;
        let mut saw_unhealthy = false;
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tokio::task::block_in_place(|| {
                if promoted_at.is_none() && cluster.role(heir) == "master" {
                    promoted_at = Some(Instant::now());
                    // Counted from the promotion: the first mixed GET with every key FRESH.
                    *fresh_again.lock().unwrap() = None;
                }
                if promoted_at.is_none() && !saw_unhealthy {
                    let (code, body) = proxy.http("/health");
                    saw_unhealthy = code == 503 && body.contains(&victim_addr);
                }
            });
            assert!(
                failed_at.elapsed() < Duration::from_secs(30),
                "no promotion in 30 s"
            );
            let long_enough = !freeze || failed_at.elapsed() >= Duration::from_secs(3);
            if let Some(at) = promoted_at {
                if let (Some(fresh), true) = (*fresh_again.lock().unwrap(), long_enough) {
                    stop.store(true, Relaxed);
                    return (at, fresh, saw_unhealthy);
                }
                assert!(
                    at.elapsed() < Duration::from_secs(4),
                    "the victim's keys not FRESH 4 s after the promotion"
                );
            }
        }
    };
    let (seen, (promoted, fresh, saw_unhealthy)) =
        tokio::join!(callers(&c, &groups, victim, &stop, &fresh_again), watch);
    let what = if freeze { "freeze" } else { "kill" };
    eprintln!(
        "{what}: {seen:?}; promoted {:?} after the fault, every key FRESH {:?} after the fault ({:?} after the promotion)",
        promoted - failed_at,
        fresh - failed_at,
        fresh.saturating_duration_since(promoted),
    );
    assert_eq!(
        seen.healthy_not_fresh, 0,
        "keys of healthy masters answered without their rows: {seen:?}"
    );
    assert!(
        seen.victim_degraded > 0,
        "the failed master's keys were served DEGRADED while it was down: {seen:?}"
    );
    // The proxy's 50 ms default deadline, and 20 ms for the reply to reach the caller.
    assert!(
        seen.slowest < Duration::from_millis(70),
        "a GET took {:?}",
        seen.slowest
    );
    // Operators saw which node failed, and see the cluster healthy once it moved on.
    assert!(
        saw_unhealthy,
        "/health never named {victim_addr} while it was down"
    );
    eventually(
        Duration::from_secs(10),
        "/health to be 200 after the failover",
        || {
            let (code, body) = proxy.http("/health");
            (code == 200).then_some(body)
        },
    );
    let stats = proxy.http("/stats").1;
    assert!(
        stats.contains(&format!("\"node\":\"127.0.0.1:{heir}\"")),
        "{stats}"
    );
    if freeze {
        // Thawed, the old master rejoins as a replica: every key stays FRESH at the default
        // deadline; a PUT acknowledged now is what is read.
        cluster.thaw(victim);
        let (stop, fresh_again) = (AtomicBool::new(false), std::sync::Mutex::new(None));
        let after = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.store(true, Relaxed);
        };
        let (seen, ()) = tokio::join!(callers(&c, &groups, victim, &stop, &fresh_again), after);
        eprintln!("{what}, a second after the thaw: {seen:?}");
        assert_eq!(
            (seen.healthy_not_fresh, seen.victim_degraded),
            (0, 0),
            "{seen:?}"
        );
        put_all(&c, &all, |_| 2.0, now_ms()).await;
        for entities in groups.values() {
            let keys: Vec<&str> = entities.iter().map(String::as_str).collect();
            let got = c.get_with("user_features", &keys, CACHED).await.unwrap();
            for (i, key) in keys.iter().enumerate() {
                let served = (got.status(i).status, got.row(i)[0]);
                assert_eq!(served, (Status::Fresh, Value::F32(2.0)), "{key}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_degrades_only_its_own_keys_until_its_replica_takes_over() {
    a_failed_master_degrades_only_its_own_keys(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_degrades_only_its_own_keys_and_rejoins() {
    a_failed_master_degrades_only_its_own_keys(true).await;
}

/// A Feast view on the cluster: one HMGET per entity, each to its own node.
const FEAST_VIEW: &str = r#"
[[view]]
name = "driver_stats"
layout = "feast"
stale_after = "1h"
max_staleness = "1d"
feast = { project = "fp_test", join_keys = [{ name = "driver_id", dtype = "string" }] }
features = [
  { name = "rate", dtype = "f32", default = -99.5 },
  { name = "trips", dtype = "i64", default = -99 },
]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_degrades_only_its_own_feast_rows() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start();
    let registry = format!("{}\n{FEAST_VIEW}", common::example_registry());
    let proxy = Proxy::start_custom(&cluster.seed_url(), 2, "", &registry, &[]);
    let c = client(&proxy, 4).await;
    // Feast's keys are its own encoding: each row's master is the one whose key count grew.
    let masters = cluster.masters();
    let dbsize = |m: u16| cluster.call(m, &[b"DBSIZE"]).int();
    let mut sizes: Vec<i64> = masters.iter().map(|&m| dbsize(m)).collect();
    let mut owner: BTreeMap<String, u16> = BTreeMap::new();
    for i in 0..90 {
        let e = format!("d{i}");
        let row = vec![Value::F32(i as f32), Value::I64(i)];
        c.put("driver_stats", &[(e.as_str(), now_ms(), row)])
            .await
            .unwrap();
        let now: Vec<i64> = masters.iter().map(|&m| dbsize(m)).collect();
        let grew = (0..masters.len()).find(|&j| now[j] > sizes[j]).unwrap();
        owner.insert(e, masters[grew]);
        sizes = now;
    }
    let victim = masters[0];
    assert!(owner.values().filter(|&&m| m == victim).count() > 10);
    let entities: Vec<String> = owner.keys().cloned().collect();

    cluster.freeze(victim);
    let stop = AtomicBool::new(false);
    let caller = |k: usize| {
        let (entities, owner, stop, c) = (&entities, &owner, &stop, &c);
        async move {
            let mut seen = Seen::default();
            let mut round = k * 11;
            let opts = GetOptions {
                bypass_cache: true,
                deadline: None,
            };
            while !stop.load(Relaxed) {
                round += 1;
                let keys: Vec<&str> = (0..30)
                    .map(|i| entities[(round * 7 + i) % entities.len()].as_str())
                    .collect();
                let started = Instant::now();
                let got = c.get_with("driver_stats", &keys, opts).await.unwrap();
                seen.slowest = seen.slowest.max(started.elapsed());
                seen.gets += 1;
                for (i, key) in keys.iter().enumerate() {
                    let (status, row) = (got.status(i).status, got.row(i));
                    let n: i64 = key[1..].parse().unwrap();
                    if owner[*key] == victim {
                        assert_eq!(status, Status::Degraded, "{key}");
                        assert_eq!(row, [Value::F32(-99.5), Value::I64(-99)], "{key}");
                        seen.victim_degraded += 1;
                    } else if status == Status::Fresh {
                        assert_eq!(row, [Value::F32(n as f32), Value::I64(n)], "{key}");
                        seen.healthy_fresh += 1;
                    } else {
                        seen.healthy_not_fresh += 1;
                    }
                }
            }
            seen
        }
    };
    // Within the node timeout (1 s) and a little past it: before any failover.
    let frozen_for = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Relaxed);
    };
    let (seen, ()) = tokio::join!(futures::future::join_all((0..4).map(caller)), frozen_for);
    let mut all = Seen::default();
    seen.iter().for_each(|s| all.add(s));
    eprintln!("feast view, one master frozen: {all:?}");
    cluster.thaw(victim);
    assert_eq!(all.healthy_not_fresh, 0, "{all:?}");
    assert!(all.victim_degraded > 0 && all.healthy_fresh > 0, "{all:?}");
    assert!(
        all.slowest < Duration::from_millis(70),
        "a GET took {:?}",
        all.slowest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_preferred_reads_from_replicas() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start();
    let proxy = Proxy::start_with(
        &cluster.seed_url(),
        1,
        "read_from = \"replica_preferred\"",
        &[],
    );
    let c = client(&proxy, 1).await;
    let groups = by_master(&cluster, 600);
    let all: Vec<String> = groups.values().flatten().cloned().collect();
    put_all(&c, &all, |_| 3.0, now_ms()).await;
    let stats = |ports: &[u16]| -> Vec<u64> {
        ports
            .iter()
            .map(|&p| cluster.info_commandstats(p, "mget"))
            .collect()
    };
    let masters = cluster.masters();
    let replicas: Vec<u16> = masters.iter().map(|&m| cluster.replica_of(m)).collect();
    // READONLY is armed per connection once the slot map lists the replicas.
    eventually(
        Duration::from_secs(10),
        "reads to reach the replicas",
        || {
            let before = stats(&replicas);
            let keys: Vec<&str> = all.iter().map(String::as_str).collect();
            let got = block(c.get_with("user_features", &keys, BYPASS)).unwrap();
            // Replication is asynchronous: a replica may not have a fresh PUT yet.
            let fresh = (0..keys.len()).all(|i| got.status(i).status == Status::Fresh);
            let reached = stats(&replicas).iter().zip(&before).all(|(a, b)| a > b);
            (fresh && reached).then_some(())
        },
    );
    let (m0, r0) = (stats(&masters), stats(&replicas));
    for _ in 0..5 {
        let keys: Vec<&str> = all.iter().map(String::as_str).collect();
        let got = c.get_with("user_features", &keys, BYPASS).await.unwrap();
        assert!((0..keys.len()).all(|i| got.row(i)[0] == Value::F32(3.0)));
    }
    assert_eq!(
        stats(&masters),
        m0,
        "masters served GETs with replica_preferred"
    );
    assert!(
        stats(&replicas).iter().zip(&r0).all(|(a, b)| a > b),
        "each replica served reads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_behind_the_proxy_reaches_every_shards_cache() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start();
    // Rows stay cached for an hour: only the owning masters' invalidations can replace them.
    let registry =
        common::example_registry().replace("hot_cache_ttl = \"1s\"", "hot_cache_ttl = \"1h\"");
    assert!(registry.contains("hot_cache_ttl = \"1h\""));
    let proxy = Proxy::start_custom(&cluster.seed_url(), 2, "", &registry, &[]);
    let shards = client_per_shard(&proxy, 2).await;
    let entities: Vec<String> = (0..30).map(|i| format!("w{i}")).collect();
    let keys: Vec<&str> = entities.iter().map(String::as_str).collect();
    put_all(&shards[0], &entities, |_| 5.0, now_ms()).await;
    // Each shard reads the rows once and then serves them from its own cache.
    for c in &shards {
        c.get_with("user_features", &keys, CACHED).await.unwrap();
        let got = c.get_with("user_features", &keys, CACHED).await.unwrap();
        for (i, key) in keys.iter().enumerate() {
            let served = (got.status(i).cached, got.row(i)[0]);
            assert_eq!(served, (true, Value::F32(5.0)), "{key}");
        }
    }
    let mut value = vec![1u8];
    value.extend_from_slice(&now_ms().to_le_bytes());
    for _ in 0..16 {
        value.extend_from_slice(&9.0f32.to_le_bytes());
    }
    for e in &entities {
        let key = store_key(e);
        let port = cluster.port_for_key(&key);
        let reply = cluster.command(port, &[b"SET", &key, &value]);
        assert_eq!(reply, b"+OK\r\n");
    }
    for c in &shards {
        eventually(
            Duration::from_secs(5),
            "each shard to serve the new rows",
            || {
                let got = block(c.get_with("user_features", &keys, CACHED)).unwrap();
                (0..keys.len())
                    .all(|i| got.row(i)[0] == Value::F32(9.0))
                    .then_some(())
            },
        );
    }
}

/// One single-connection client per shard (connections land on shards by the kernel's hash).
async fn client_per_shard(proxy: &Proxy, shards: u16) -> Vec<Client> {
    let mut found: Vec<Option<Client>> = (0..shards).map(|_| None).collect();
    for _ in 0..200 {
        let c = client(proxy, 1).await;
        let shard = c.hello_info().await.unwrap().shard as usize;
        if found[shard].is_none() {
            found[shard] = Some(c);
        }
        if found.iter().all(Option::is_some) {
            return found.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("200 connections never reached all {shards} shards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_during_a_failover_is_whole_or_says_it_may_be_partial() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start();
    let proxy = Proxy::start_with(&cluster.seed_url(), 1, "", &[]);
    // Longer than the proxy's write_timeout (1 s), so that the proxy's answer is what is seen.
    let opts = ClientOptions {
        pool_size: 1,
        timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let c = Client::connect(proxy.addr(), opts).await.unwrap();
    let groups = by_master(&cluster, 300);
    let all: Vec<String> = groups.values().flatten().cloned().collect();
    put_all(&c, &all, |_| 0.0, now_ms()).await;
    let victim = *groups.keys().next().unwrap();
    let heir = cluster.replica_of(victim);
    // Every acknowledged row of the victim is on its replica before the kill (replication is
    // asynchronous: a row acknowledged just before a kill can be lost, by Redis's design).
    eventually(
        Duration::from_secs(5),
        "the replica to hold the victim's rows",
        || {
            let keys: Vec<Vec<u8>> = groups[&victim].iter().map(|e| store_key(e)).collect();
            let mut cmds: Vec<Vec<&[u8]>> = vec![vec![b"READONLY"]];
            cmds.extend(keys.iter().map(|k| vec![&b"GET"[..], k]));
            let cmds: Vec<&[&[u8]]> = cmds.iter().map(Vec::as_slice).collect();
            let replies = cluster.pipeline(heir, &cmds);
            replies[1..]
                .iter()
                .all(|r| !r.starts_with(b"$-1"))
                .then_some(())
        },
    );

    cluster.kill(victim);
    let rows = |round: usize| -> Vec<(String, u64, Vec<Value>)> {
        all.iter()
            .map(|e| (e.clone(), now_ms(), flat_row(round as f32)))
            .collect()
    };
    let mut acked;
    let (mut whole, mut partial, mut refused) = (0, 0, 0);
    let started = Instant::now();
    let mut round = 0;
    let mut slowest_failed = Duration::ZERO;
    // PUT every row, round after round, until one is acknowledged after the promotion.
    loop {
        round += 1;
        let promoted = cluster.role(heir) == "master";
        let sent = Instant::now();
        let result = c.put("user_features", &rows(round)).await;
        if result.is_err() {
            slowest_failed = slowest_failed.max(sent.elapsed());
        }
        match result {
            Ok(n) => {
                assert_eq!(n as usize, all.len());
                acked = round;
                whole += 1;
                if promoted {
                    break;
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if msg.contains("may be partial") {
                    assert!(msg.contains(" of 300 rows acknowledged"), "{msg}");
                    partial += 1;
                } else {
                    assert!(
                        msg.contains("nothing acknowledged") || msg.contains("did not acknowledge"),
                        "{msg}"
                    );
                    refused += 1;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no acknowledged PUT 30 s after the kill"
        );
    }
    eprintln!("PUTs during the failover: {whole} whole, {partial} partial, {refused} refused, the slowest failed one {slowest_failed:?}; last acknowledged round {acked}");
    assert!(
        partial > 0,
        "a PUT spanning a dead master must fail as partial"
    );
    // The dead master's connection is known lost: its part fails at once, not after the
    // proxy's 1 s write_timeout.
    assert!(
        slowest_failed < Duration::from_millis(200),
        "a PUT to a dead master took {slowest_failed:?} to fail"
    );
    // No row older than the last acknowledged PUT is ever served.
    let keys: Vec<&str> = all.iter().map(String::as_str).collect();
    let got = c.get_with("user_features", &keys, BYPASS).await.unwrap();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            (got.status(i).status, got.row(i)[0]),
            (Status::Fresh, Value::F32(acked as f32)),
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replica_preferred_a_killed_masters_keys_are_served_by_its_replica() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start();
    let proxy = Proxy::start_with(
        &cluster.seed_url(),
        1,
        "read_from = \"replica_preferred\"",
        &[],
    );
    let c = client(&proxy, 1).await;
    let groups = by_master(&cluster, 300);
    let all: Vec<String> = groups.values().flatten().cloned().collect();
    put_all(&c, &all, |_| 4.0, now_ms()).await;
    let victim = *groups.keys().next().unwrap();
    let heir = cluster.replica_of(victim);
    // Reads reach the replicas (READONLY armed, the rows replicated) before the kill.
    eventually(
        Duration::from_secs(10),
        "every row FRESH from the replicas",
        || {
            let before = cluster.info_commandstats(heir, "mget");
            let keys: Vec<&str> = all.iter().map(String::as_str).collect();
            let got = block(c.get_with("user_features", &keys, BYPASS)).unwrap();
            let fresh = (0..keys.len()).all(|i| got.status(i).status == Status::Fresh);
            (fresh && cluster.info_commandstats(heir, "mget") > before).then_some(())
        },
    );
    cluster.kill(victim);
    let started = Instant::now();
    let mut promoted_at = None;
    let degraded = hammer(&c, &groups, |_| {
        if promoted_at.is_none() && cluster.role(heir) == "master" {
            promoted_at = Some(Instant::now());
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no promotion in 30 s"
        );
        // A second past the promotion, reads have gone through the new slot map.
        promoted_at.is_some_and(|at| at.elapsed() > Duration::from_secs(1))
    })
    .await;
    eprintln!("replica_preferred kill: DEGRADED answers per master {degraded:?}");
    assert!(
        degraded.values().all(|n| *n == 0),
        "{degraded:?}: a replica serves its dead primary's keys"
    );
}
