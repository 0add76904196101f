//! The local Redis Cluster harness (tests/common/cluster.rs) against real redis-servers: routing
//! by slot, MOVED, replica reads, and the cluster's own failover after a kill and a freeze.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Reply, NODE_TIMEOUT_MS};
use common::eventually;

fn bulk(v: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", v.len()).into_bytes();
    out.extend_from_slice(v);
    out.extend_from_slice(b"\r\n");
    out
}

/// A key that `master` owns, with its prefix.
fn key_on(c: &Cluster, master: u16, prefix: &str) -> Vec<u8> {
    (0..)
        .map(|i| format!("{prefix}:{i}").into_bytes())
        .find(|k| c.port_for_key(k) == master)
        .unwrap()
}

/// SET on the master, then WAIT on the same connection until its replica acknowledged it.
fn set_replicated(c: &Cluster, master: u16, key: &[u8], value: &[u8]) {
    let r = c.pipeline(master, &[&[b"SET", key, value], &[b"WAIT", b"1", b"2000"]]);
    assert_eq!(r, vec![b"+OK\r\n".to_vec(), b":1\r\n".to_vec()]);
}

/// GET on a replica after READONLY (same connection).
fn replica_get(c: &Cluster, replica: u16, key: &[u8]) -> Vec<u8> {
    let r = c.pipeline(replica, &[&[b"READONLY"], &[b"GET", key]]);
    assert_eq!(r[0], b"+OK\r\n", "READONLY on {replica}");
    r[1].clone()
}

#[test]
fn routes_by_slot_redirects_and_serves_reads_from_replicas() {
    let t0 = Instant::now();
    let c = Cluster::start();
    eprintln!("cluster start: {:?}", t0.elapsed());

    let ports = c.ports();
    assert_eq!(ports.len(), 6);
    assert_eq!(
        c.seed_url(),
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            ports[0], ports[1], ports[2]
        )
    );
    let masters = c.masters();
    assert_eq!(masters.len(), 3, "masters {masters:?}");
    // Every range has its master's replica listed (pitfall 6 handled by start()).
    let ranges = c.slots();
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    for r in &ranges {
        assert!(masters.contains(&r.master));
        assert_eq!(r.replicas, vec![c.replica_of(r.master)], "{r:?}");
        assert_eq!(c.master_of_slot(r.start), r.master);
        assert_eq!(c.master_of_slot(r.end), r.master);
        assert_eq!(c.role(r.replicas[0]), "slave");
    }

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
    let mut by_owner: BTreeMap<u16, Pairs> = BTreeMap::new();
    for i in 0..100 {
        let (k, v) = (
            format!("key:{i}").into_bytes(),
            format!("value-{i}").into_bytes(),
        );
        by_owner.entry(c.port_for_key(&k)).or_default().push((k, v));
    }
    assert_eq!(by_owner.len(), 3, "100 keys spread over the 3 masters");

    for (&owner, kvs) in &by_owner {
        assert!(masters.contains(&owner));
        // SETs then WAIT on one connection: WAIT counts this connection's writes.
        let mut cmds: Vec<Vec<&[u8]>> = kvs.iter().map(|(k, v)| vec![&b"SET"[..], k, v]).collect();
        cmds.push(vec![b"WAIT", b"1", b"2000"]);
        let cmds: Vec<&[&[u8]]> = cmds.iter().map(|c| c.as_slice()).collect();
        let replies = c.pipeline(owner, &cmds);
        let (wait, sets) = replies.split_last().unwrap();
        assert!(sets.iter().all(|r| r == b"+OK\r\n"), "SETs on {owner}");
        assert_eq!(wait, b":1\r\n", "WAIT on {owner}");

        for (k, v) in kvs {
            assert_eq!(
                c.command(owner, &[b"GET", k]),
                bulk(v),
                "GET on owner {owner}"
            );
        }

        // Another master, and the owner's replica without READONLY, redirect to the owner.
        let (k, _) = &kvs[0];
        let moved = format!("-MOVED {} 127.0.0.1:{owner}\r\n", c.slot_of(k)).into_bytes();
        let other = *masters.iter().find(|&&m| m != owner).unwrap();
        assert_eq!(c.command(other, &[b"GET", k]), moved);
        let replica = c.replica_of(owner);
        assert_eq!(c.command(replica, &[b"GET", k]), moved);

        // READONLY + GET on the replica: the replicated value.
        let mut cmds: Vec<Vec<&[u8]>> = vec![vec![b"READONLY"]];
        cmds.extend(kvs.iter().map(|(k, _)| vec![&b"GET"[..], k]));
        let cmds: Vec<&[&[u8]]> = cmds.iter().map(|c| c.as_slice()).collect();
        let replies = c.pipeline(replica, &cmds);
        assert_eq!(replies[0], b"+OK\r\n");
        for ((_, v), r) in kvs.iter().zip(&replies[1..]) {
            assert_eq!(r, &bulk(v), "READONLY GET on replica {replica}");
        }

        // commandstats tell which node served: rejected (MOVED) GETs are not calls.
        assert_eq!(c.info_commandstats(replica, "get"), kvs.len() as u64);
        assert_eq!(c.info_commandstats(owner, "GET"), kvs.len() as u64);
        assert_eq!(c.info_commandstats(replica, "mget"), 0);
    }
    // A parsed reply, for the record.
    let (k, v) = &by_owner.values().next().unwrap()[0];
    let owner = c.port_for_key(k);
    assert_eq!(c.call(owner, &[b"GET", k]), Reply::Bulk(Some(v.clone())));
    // A reply much longer than one read (64 KiB).
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let owner = c.port_for_key(b"big");
    assert_eq!(c.command(owner, &[b"SET", b"big", &big]), b"+OK\r\n");
    assert_eq!(c.command(owner, &[b"GET", b"big"]), bulk(&big));
}

#[test]
fn killed_master_is_replaced_by_its_replica_and_rejoins_as_replica() {
    let t0 = Instant::now();
    let mut c = Cluster::start();
    eprintln!("cluster start: {:?}", t0.elapsed());

    let m = c.masters()[0];
    let r = c.replica_of(m);
    let owned: Vec<_> = c.slots().into_iter().filter(|s| s.master == m).collect();
    assert!(!owned.is_empty());
    let key = key_on(&c, m, "kill");
    set_replicated(&c, m, &key, b"before-kill");

    let t = Instant::now();
    c.kill(m);
    let new = c.wait_promoted(m);
    let took = t.elapsed();
    eprintln!("promotion after SIGKILL of master {m}: {took:?} (replica {new})");
    assert!(took < Duration::from_secs(15), "promotion took {took:?}");
    assert_eq!(new, r, "the killed master's replica was promoted");
    assert_eq!(c.role(new), "master");
    assert_eq!(c.masters().len(), 3);
    // Every live node maps the killed master's slots to the promoted node.
    for p in c.live_ports() {
        let seen = c.slots_seen_by(p);
        for s in &owned {
            let range = seen.iter().find(|x| x.start == s.start && x.end == s.end);
            assert_eq!(range.map(|x| x.master), Some(new), "node {p}: {seen:?}");
        }
    }
    assert_eq!(c.master_of_slot(owned[0].start), new);
    assert_eq!(c.port_for_key(&key), new);
    assert_eq!(c.command(new, &[b"GET", &key]), bulk(b"before-kill"));

    let t = Instant::now();
    c.restart(m);
    c.wait_healthy(3, 3);
    eprintln!(
        "killed master {m} back as a synced replica: {:?}",
        t.elapsed()
    );
    assert_eq!(c.role(m), "slave");
    assert_eq!(c.replica_of(new), m);
    assert_eq!(replica_get(&c, m, &key), bulk(b"before-kill"));
}

#[test]
fn frozen_master_is_replaced_and_rejoins_as_replica_when_thawed() {
    let t0 = Instant::now();
    let mut c = Cluster::start();
    eprintln!("cluster start: {:?}", t0.elapsed());

    let masters = c.masters();
    let m = masters[1];
    let r = c.replica_of(m);
    let other = *masters.iter().find(|&&x| x != m).unwrap();
    let key = key_on(&c, m, "freeze");
    set_replicated(&c, m, &key, b"before-freeze");
    let other_key = key_on(&c, other, "other");

    let t = Instant::now();
    c.freeze(m);
    let new = c.wait_promoted(m);
    let took = t.elapsed();
    eprintln!("promotion after SIGSTOP of master {m}: {took:?} (replica {new})");
    assert!(took < Duration::from_secs(15), "promotion took {took:?}");
    assert!(
        took > Duration::from_millis(NODE_TIMEOUT_MS),
        "promoted before the node timeout: {took:?}"
    );
    assert_eq!(new, r);
    assert_eq!(c.port_for_key(&key), new);
    assert_eq!(c.command(new, &[b"GET", &key]), bulk(b"before-freeze"));
    // The other masters serve while m is frozen (cluster-require-full-coverage no).
    assert_eq!(
        c.command(other, &[b"SET", &other_key, b"during-freeze"]),
        b"+OK\r\n"
    );
    assert_eq!(
        c.command(other, &[b"GET", &other_key]),
        bulk(b"during-freeze")
    );

    // Frozen for at least 3 s (3 node timeouts), then thawed.
    if let Some(rest) = Duration::from_secs(3).checked_sub(t.elapsed()) {
        std::thread::sleep(rest);
    }
    c.thaw(m);
    let t = Instant::now();
    eventually(
        Duration::from_secs(30),
        "the thawed master a replica",
        || (c.role(m) == "slave").then_some(()),
    );
    c.wait_healthy(3, 3);
    eprintln!(
        "thawed master {m} back as a synced replica: {:?}",
        t.elapsed()
    );
    assert_eq!(c.replica_of(new), m);
    assert_eq!(c.masters().len(), 3);
    assert!(!c.masters().contains(&m));
    assert_eq!(replica_get(&c, m, &key), bulk(b"before-freeze"));
}
