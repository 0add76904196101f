//! A real local Redis Cluster for integration tests: six redis-servers (3 masters + 3 replicas)
//! joined by the real `redis-cli --cluster create`, each a `Child` of the test, all stopped when
//! dropped. Fault tests kill, freeze (SIGSTOP) or restart single nodes and wait for the cluster's
//! own failover. Nothing here mocks Redis.
//!
//! Settings (see /work/shared/notes/redis-cluster.md §3–4): node timeout 1000 ms, so a dead or
//! frozen master is replaced in about 2–3 s; `cluster-require-full-coverage no` and
//! `cluster-allow-reads-when-down yes`, so the other masters keep serving meanwhile;
//! `repl-diskless-sync-delay 0`, else every replica waits 5 s for its first sync.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// Milliseconds without an answer before the cluster marks a node as failing.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// Limit for the cluster to settle (formation, failover, a node rejoining).
const SETTLE: Duration = Duration::from_secs(30);

/// Read timeout of the probes used while waiting: a node that does not answer is not healthy.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One RESP2 reply, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// Parses one complete reply from the start of `buf`: the reply and the bytes it took, or
    /// None while `buf` holds only part of it.
    pub fn parse(buf: &[u8]) -> Option<(Reply, usize)> {
        let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&buf[1..line_end]).expect("RESP header is UTF-8");
        let after = line_end + 2;
        let int = || -> i64 {
            line.parse()
                .unwrap_or_else(|_| panic!("bad RESP number {line:?}"))
        };
        match buf[0] {
            b'+' => Some((Reply::Status(line.to_string()), after)),
            b'-' => Some((Reply::Error(line.to_string()), after)),
            b':' => Some((Reply::Int(int()), after)),
            b'$' => {
                let n = int();
                if n < 0 {
                    return Some((Reply::Bulk(None), after));
                }
                let end = after + n as usize;
                if buf.len() < end + 2 {
                    return None;
                }
                Some((Reply::Bulk(Some(buf[after..end].to_vec())), end + 2))
            }
            b'*' => {
                let n = int();
                if n < 0 {
                    return Some((Reply::Array(None), after));
                }
                let mut items = Vec::with_capacity(n as usize);
                let mut pos = after;
                for _ in 0..n {
                    let (item, used) = Reply::parse(&buf[pos..])?;
                    items.push(item);
                    pos += used;
                }
                Some((Reply::Array(Some(items)), pos))
            }
            other => panic!("unexpected RESP type byte {:?}", other as char),
        }
    }

    /// The text of a status, error or bulk reply.
    pub fn text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    pub fn int(&self) -> i64 {
        match self {
            Reply::Int(i) => *i,
            other => panic!("expected an integer, got {other:?}"),
        }
    }

    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(Some(v)) => v,
            other => panic!("expected an array, got {other:?}"),
        }
    }
}

/// One contiguous slot range of CLUSTER SLOTS: its master and the replicas listed with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub master: u16,
    pub replicas: Vec<u16>,
}

fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Sends `cmds` on one new connection (pipelined, so state like READONLY or WAIT's write offset
/// carries from one to the next) and reads one complete reply per command, however many reads
/// that takes. Returns the raw reply bytes, one entry per command.
fn try_pipeline(port: u16, cmds: &[&[&[u8]]], timeout: Duration) -> io::Result<Vec<Vec<u8>>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = Vec::new();
    for c in cmds {
        encode(c, &mut req);
    }
    s.write_all(&req)?;
    let mut buf = Vec::new();
    let mut replies = Vec::with_capacity(cmds.len());
    let mut tmp = [0u8; 1 << 16];
    while replies.len() < cmds.len() {
        if let Some((_, used)) = Reply::parse(&buf) {
            replies.push(buf.drain(..used).collect());
            continue;
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("port {port} closed the connection before the reply"),
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Ok(replies)
}

fn try_call(port: u16, args: &[&[u8]], timeout: Duration) -> io::Result<Reply> {
    let raw = try_pipeline(port, &[args], timeout)?.pop().unwrap();
    Ok(Reply::parse(&raw).unwrap().0)
}

/// A probe for the waiting loops: the reply's text, or why there is none.
fn probe_text(port: u16, args: &[&[u8]]) -> Result<String, String> {
    match try_call(port, args, PROBE_TIMEOUT) {
        Ok(Reply::Error(e)) => Err(format!("port {port}: {e}")),
        Ok(r) => Ok(r.text()),
        Err(e) => Err(format!("port {port}: {e}")),
    }
}

/// `ROLE`'s first element: "master" or "slave".
fn probe_role(port: u16) -> Result<String, String> {
    match try_call(port, &[b"ROLE"], PROBE_TIMEOUT) {
        Ok(r @ Reply::Array(Some(_))) => Ok(r.items()[0].text()),
        Ok(r) => Err(format!("port {port}: ROLE answered {r:?}")),
        Err(e) => Err(format!("port {port}: {e}")),
    }
}

fn probe_slots(port: u16) -> Result<Vec<SlotRange>, String> {
    match try_call(port, &[b"CLUSTER", b"SLOTS"], PROBE_TIMEOUT) {
        Ok(r @ Reply::Array(Some(_))) => Ok(parse_slots(&r)),
        Ok(r) => Err(format!("port {port}: CLUSTER SLOTS answered {r:?}")),
        Err(e) => Err(format!("port {port}: {e}")),
    }
}

fn parse_slots(r: &Reply) -> Vec<SlotRange> {
    let node_port = |n: &Reply| n.items()[1].int() as u16;
    let mut ranges: Vec<SlotRange> = r
        .items()
        .iter()
        .map(|e| {
            let e = e.items();
            SlotRange {
                start: e[0].int() as u16,
                end: e[1].int() as u16,
                master: node_port(&e[2]),
                replicas: e[3..].iter().map(node_port).collect(),
            }
        })
        .collect();
    ranges.sort_by_key(|r| r.start);
    ranges
}

/// `key:value` from an INFO-style text.
fn info_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(key)?.strip_prefix(':'))
}

/// One CLUSTER NODES line: `<id> <ip:port@bus> <flags> <master id or -> ...`.
struct NodeLine {
    id: String,
    port: u16,
    flags: String,
    master_id: String,
}

impl NodeLine {
    fn parse(line: &str) -> NodeLine {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = f[1]
            .rsplit_once(':')
            .and_then(|(_, p)| p.split(['@', ',']).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("bad CLUSTER NODES line {line:?}"));
        NodeLine {
            id: f[0].to_string(),
            port,
            flags: f[2].to_string(),
            master_id: f[3].to_string(),
        }
    }

    /// Not failed, not suspected (`fail?`), not still joining.
    fn is_up(&self) -> bool {
        !["fail", "handshake", "noaddr"]
            .iter()
            .any(|f| self.flags.contains(f))
    }

    fn has_flag(&self, flag: &str) -> bool {
        self.flags.split(',').any(|f| f == flag)
    }
}

fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(NodeLine::parse)
        .collect()
}

/// Polls `f` every 20 ms until it returns Ok; fails the test after `limit` with `f`'s last
/// reason (like `eventually`, which cannot say why).
fn wait_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(why) => assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}: {why}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid} failed");
}

/// The state letter of /proc/PID/stat ('T' = stopped), or None once it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Six ports p with p ≤ 55535 (redis-server refuses more: its bus is p + 10000) and p + 10000
/// free, none of the twelve equal.
fn cluster_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < n {
        let p = free_port();
        if p > 55535 {
            continue;
        }
        let bus = p + 10000;
        let clash = ports
            .iter()
            .any(|&q| q == bus || q + 10000 == p || q + 10000 == bus);
        if clash || TcpListener::bind(("127.0.0.1", bus)).is_err() {
            continue;
        }
        ports.push(p);
    }
    ports
}

struct Node {
    port: u16,
    /// CLUSTER MYID; kept across restarts (nodes.conf stays in the node's directory).
    id: String,
    child: Option<Child>,
    frozen: bool,
    /// Its replicas when it was last killed or frozen, for `wait_promoted`.
    replicas_at_fault: Vec<u16>,
}

pub struct Cluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Six nodes, `redis-cli --cluster create … --cluster-replicas 1`, then waits until every
    /// node sees 3 masters + 3 synced replicas and CLUSTER SLOTS lists a replica for each range
    /// (after one write per master: Redis hides replicas whose replication offset is 0).
    pub fn start() -> Cluster {
        let started = Instant::now();
        let mut attempt = 1;
        let mut c = loop {
            match Cluster::try_create() {
                Ok(c) => break c,
                // A port taken between free_port() and redis-server's bind: new ports.
                Err(e) if attempt < 3 => eprintln!("cluster start attempt {attempt}: {e}"),
                Err(e) => panic!("cluster start failed 3 times; last: {e}"),
            }
            attempt += 1;
        };
        let created = started.elapsed();
        c.nodes.iter_mut().for_each(|n| {
            n.id = probe_text(n.port, &[b"CLUSTER", b"MYID"]).expect("CLUSTER MYID");
        });
        wait_until(SETTLE, "the new cluster healthy (3 + 3)", || {
            c.healthy(3, 3, false)
        });
        let healthy = started.elapsed();
        for m in c.masters() {
            let key = c.key_on(m);
            let r = c.command(m, &[b"SET", &key, b"harness"]);
            assert_eq!(r, b"+OK\r\n", "SET on master {m}");
        }
        c.wait_healthy(3, 3);
        eprintln!(
            "cluster {:?} ready in {:?} (created {created:?}, healthy {healthy:?})",
            c.ports(),
            started.elapsed()
        );
        c
    }

    fn try_create() -> Result<Cluster, String> {
        let mut c = Cluster {
            nodes: cluster_ports(6)
                .into_iter()
                .map(|port| Node {
                    port,
                    id: String::new(),
                    child: None,
                    frozen: false,
                    replicas_at_fault: Vec::new(),
                })
                .collect(),
            dir: tempfile::tempdir().unwrap(),
        };
        for i in 0..c.nodes.len() {
            let child = spawn(c.dir.path(), c.nodes[i].port);
            c.nodes[i].child = Some(child);
        }
        for i in 0..c.nodes.len() {
            let port = c.nodes[i].port;
            let node_dir = c.node_dir(port);
            wait_listening(c.nodes[i].child.as_mut().unwrap(), port, &node_dir)?;
        }
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(c.ports().iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains("[OK] All 16384 slots covered") {
            return Err(format!(
                "redis-cli --cluster create: {}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(c)
    }

    fn node_dir(&self, port: u16) -> PathBuf {
        self.dir.path().join(port.to_string())
    }

    fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("port {port} is not a node of this cluster"))
    }

    fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("port {port} is not a node of this cluster"))
    }

    /// Nodes running and not frozen.
    fn live(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some() && !n.frozen)
            .map(|n| n.port)
    }

    fn any_live(&self) -> u16 {
        self.live().next().expect("no live node")
    }

    /// A key whose slot `master` owns.
    fn key_on(&self, master: u16) -> Vec<u8> {
        (0..)
            .map(|i| format!("harness:{i}").into_bytes())
            .find(|k| self.port_for_key(k) == master)
            .unwrap()
    }

    // ---- accessors ----

    /// Three seeds, as featureproxy's `--redis` takes them.
    pub fn seed_url(&self) -> String {
        let p = self.ports();
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            p[0], p[1], p[2]
        )
    }

    /// All six ports, in creation order (dead or frozen ones included).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The CLUSTER MYID of `port`.
    pub fn node_id(&self, port: u16) -> String {
        self.node(port).id.clone()
    }

    /// "master" or "slave", from the node's own ROLE.
    pub fn role(&self, port: u16) -> String {
        probe_role(port).unwrap_or_else(|e| panic!("ROLE: {e}"))
    }

    /// Live nodes whose ROLE is master.
    pub fn masters(&self) -> Vec<u16> {
        self.live()
            .filter(|&p| probe_role(p).is_ok_and(|r| r == "master"))
            .collect()
    }

    /// The live, non-failed replicas of `master`, from CLUSTER NODES of a live node.
    pub fn replicas_of(&self, master: u16) -> Vec<u16> {
        let id = self.node_id(master);
        let asked = self
            .live()
            .find(|&p| p != master)
            .unwrap_or_else(|| self.any_live());
        let text = probe_text(asked, &[b"CLUSTER", b"NODES"])
            .unwrap_or_else(|e| panic!("CLUSTER NODES: {e}"));
        parse_nodes(&text)
            .into_iter()
            .filter(|l| l.master_id == id && l.has_flag("slave") && l.is_up())
            .map(|l| l.port)
            .collect()
    }

    /// The replica of `master` (panics if it has none).
    pub fn replica_of(&self, master: u16) -> u16 {
        *self
            .replicas_of(master)
            .first()
            .unwrap_or_else(|| panic!("master {master} has no replica"))
    }

    /// CLUSTER SLOTS as one live node sees it, sorted by range start.
    pub fn slots(&self) -> Vec<SlotRange> {
        self.slots_seen_by(self.any_live())
    }

    /// CLUSTER SLOTS as node `port` sees it, sorted by range start.
    pub fn slots_seen_by(&self, port: u16) -> Vec<SlotRange> {
        probe_slots(port).unwrap_or_else(|e| panic!("CLUSTER SLOTS: {e}"))
    }

    /// Nodes running and not frozen.
    pub fn live_ports(&self) -> Vec<u16> {
        self.live().collect()
    }

    /// The master port serving `slot`, per CLUSTER SLOTS.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        let ranges = self.slots();
        ranges
            .iter()
            .find(|r| r.start <= slot && slot <= r.end)
            .unwrap_or_else(|| panic!("slot {slot} is not covered: {ranges:?}"))
            .master
    }

    /// CLUSTER KEYSLOT of `key`.
    pub fn slot_of(&self, key: &[u8]) -> u16 {
        let r = self.call(self.any_live(), &[b"CLUSTER", b"KEYSLOT", key]);
        r.int() as u16
    }

    /// The master port owning `key`.
    pub fn port_for_key(&self, key: &[u8]) -> u16 {
        self.master_of_slot(self.slot_of(key))
    }

    /// One command over RESP on a new connection; the raw reply, however many reads it takes.
    pub fn command(&self, port: u16, args: &[&[u8]]) -> Vec<u8> {
        self.pipeline(port, &[args]).pop().unwrap()
    }

    /// Several commands on one connection (READONLY then GETs, SETs then WAIT); raw replies.
    pub fn pipeline(&self, port: u16, cmds: &[&[&[u8]]]) -> Vec<Vec<u8>> {
        try_pipeline(port, cmds, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("port {port}: {e}"))
    }

    /// [`Cluster::command`], parsed.
    pub fn call(&self, port: u16, args: &[&[u8]]) -> Reply {
        Reply::parse(&self.command(port, args)).unwrap().0
    }

    /// The `calls` count of `command` (e.g. "mget") in the node's INFO commandstats; 0 if the
    /// node never ran it. Commands rejected with MOVED are not calls.
    pub fn info_commandstats(&self, port: u16, command: &str) -> u64 {
        let info = self.call(port, &[b"INFO", b"commandstats"]).text();
        let key = format!("cmdstat_{}", command.to_ascii_lowercase());
        info_field(&info, &key)
            .map(|v| {
                v.split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("bad commandstats line {key}:{v}"))
            })
            .unwrap_or(0)
    }

    /// A counter of the node's INFO stats (e.g. `total_reads_processed`: the read events the
    /// node handled on its client connections, one per socket read however many commands it
    /// brought).
    pub fn info_stat(&self, port: u16, field: &str) -> u64 {
        let info = self.call(port, &[b"INFO", b"stats"]).text();
        info_field(&info, field)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no INFO stats field {field} on {port}"))
    }

    /// The node's redis-server log (its stdout).
    pub fn log(&self, port: u16) -> String {
        std::fs::read_to_string(self.node_dir(port).join("log")).unwrap_or_default()
    }

    // ---- faults ----

    /// SIGKILL and reap.
    pub fn kill(&mut self, port: u16) {
        let replicas = self.replicas_if_master(port);
        let n = self.node_mut(port);
        n.replicas_at_fault = replicas;
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        n.frozen = false;
    }

    /// SIGSTOP, and waits until the process is stopped: it keeps its sockets, answers nothing.
    pub fn freeze(&mut self, port: u16) {
        let replicas = self.replicas_if_master(port);
        let n = self.node_mut(port);
        n.replicas_at_fault = replicas;
        let pid = n.child.as_ref().expect("node running").id();
        signal(pid, "-STOP");
        n.frozen = true;
        wait_until(
            Duration::from_secs(5),
            "the node stopped",
            || match proc_state(pid) {
                Some('T') | Some('t') => Ok(()),
                s => Err(format!("pid {pid} state {s:?}")),
            },
        );
    }

    /// SIGCONT, and waits until the process runs again.
    pub fn thaw(&mut self, port: u16) {
        let n = self.node_mut(port);
        let pid = n.child.as_ref().expect("node running").id();
        signal(pid, "-CONT");
        n.frozen = false;
        wait_until(
            Duration::from_secs(5),
            "the node continued",
            || match proc_state(pid) {
                Some('T') | Some('t') => Err(format!("pid {pid} still stopped")),
                _ => Ok(()),
            },
        );
    }

    /// Starts `port` again with the same arguments and directory (its nodes.conf, no data). A
    /// master replaced meanwhile rejoins as a replica: follow with [`Cluster::wait_healthy`].
    pub fn restart(&mut self, port: u16) {
        if self.node(port).child.is_some() {
            self.kill(port);
        }
        let dir = self.dir.path().to_path_buf();
        let mut child = spawn(&dir, port);
        let log = self.node_dir(port);
        wait_listening(&mut child, port, &log).unwrap_or_else(|e| panic!("restart: {e}"));
        let n = self.node_mut(port);
        n.child = Some(child);
        n.frozen = false;
    }

    fn replicas_if_master(&self, port: u16) -> Vec<u16> {
        let n = self.node(port);
        if n.child.is_none() || n.frozen || probe_role(port).ok().as_deref() != Some("master") {
            return Vec::new();
        }
        self.replicas_of(port)
    }

    /// After killing or freezing master `old_master`: waits until one of its replicas says ROLE
    /// master and every live node says cluster_state:ok with all 16384 slots ok (so none still
    /// maps a slot to the failed master). Returns the new master's port.
    pub fn wait_promoted(&self, old_master: u16) -> u16 {
        let mut candidates = self.node(old_master).replicas_at_fault.clone();
        if candidates.is_empty() {
            candidates = self.replicas_of(old_master);
        }
        assert!(
            !candidates.is_empty(),
            "{old_master} had no replica to promote"
        );
        wait_until(SETTLE, "a replica promoted", || {
            let new = candidates
                .iter()
                .copied()
                .filter(|&c| self.live().any(|p| p == c))
                .find(|&c| probe_role(c).is_ok_and(|r| r == "master"))
                .ok_or_else(|| format!("none of {candidates:?} is master yet"))?;
            for p in self.live() {
                let info = probe_text(p, &[b"CLUSTER", b"INFO"])?;
                check_info(p, &info)?;
            }
            Ok(new)
        })
    }

    /// Waits (30 s) until every live node says cluster_state:ok with all slots ok, sees exactly
    /// `masters` masters and `replicas` replicas not failing, every replica's link to its master
    /// is up, and its CLUSTER SLOTS covers all slots with `masters` masters and lists all
    /// `replicas` replicas.
    pub fn wait_healthy(&self, masters: usize, replicas: usize) {
        wait_until(
            SETTLE,
            &format!("cluster healthy ({masters} + {replicas})"),
            || self.healthy(masters, replicas, true),
        );
    }

    fn healthy(&self, masters: usize, replicas: usize, with_slots: bool) -> Result<(), String> {
        for p in self.live() {
            check_info(p, &probe_text(p, &[b"CLUSTER", b"INFO"])?)?;
            let nodes = parse_nodes(&probe_text(p, &[b"CLUSTER", b"NODES"])?);
            let count = |flag| {
                nodes
                    .iter()
                    .filter(|l| l.has_flag(flag) && l.is_up())
                    .count()
            };
            let (m, r) = (count("master"), count("slave"));
            if (m, r) != (masters, replicas) {
                return Err(format!("port {p} sees {m} masters + {r} replicas"));
            }
            if probe_role(p)? == "slave" {
                let repl = probe_text(p, &[b"INFO", b"replication"])?;
                if info_field(&repl, "master_link_status") != Some("up") {
                    return Err(format!("replica {p}: master link not up"));
                }
            }
            if with_slots {
                let ranges = probe_slots(p)?;
                let covered: usize = ranges.iter().map(|r| (r.end - r.start) as usize + 1).sum();
                let ms: BTreeSet<u16> = ranges.iter().map(|r| r.master).collect();
                let rs: BTreeSet<u16> = ranges.iter().flat_map(|r| r.replicas.clone()).collect();
                if covered != 16384 || ms.len() != masters || rs.len() != replicas {
                    return Err(format!("port {p}: CLUSTER SLOTS {ranges:?}"));
                }
            }
        }
        Ok(())
    }
}

fn check_info(port: u16, info: &str) -> Result<(), String> {
    let state = info_field(info, "cluster_state");
    let ok = info_field(info, "cluster_slots_ok");
    if state != Some("ok") || ok != Some("16384") {
        return Err(format!(
            "port {port}: cluster_state {state:?}, cluster_slots_ok {ok:?}"
        ));
    }
    Ok(())
}

fn spawn(dir: &Path, port: u16) -> Child {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).unwrap();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(node_dir.join("log"))
        .unwrap();
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(&node_dir)
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &NODE_TIMEOUT_MS.to_string(),
            "--cluster-require-full-coverage",
            "no",
            "--cluster-allow-reads-when-down",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (apt-get install redis-server)")
}

/// Waits until `port` accepts connections; an Err if the server exits first (a port taken).
fn wait_listening(child: &mut Child, port: u16, node_dir: &Path) -> Result<(), String> {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(st) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(node_dir.join("log")).unwrap_or_default();
            return Err(format!("redis-server on {port} exited ({st}):\n{log}"));
        }
        if start.elapsed() > Duration::from_secs(20) {
            return Err(format!("nothing listens on port {port} after 20s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                // A stopped process may not die of SIGKILL until continued on some systems.
                let _ = Command::new("kill")
                    .args(["-CONT", &c.id().to_string()])
                    .stderr(Stdio::null())
                    .status();
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // self.dir (a TempDir) is removed after this.
    }
}
