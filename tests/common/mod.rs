//! Real parts for integration tests: a redis-server on a free port and the proxy binary, both
//! stopped when dropped. Nothing here mocks Redis; fault tests kill, freeze or restart it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use featureproxy_protocol::{
    decode_frame, Frame, Limits, ProtocolError, Request, Response, SchemaReply,
};

pub mod cluster;
pub mod tls;

/// Wall-clock Unix milliseconds, as `computed_at` is written.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A user_features row with every one of its 16 features set to `v`.
pub fn flat_row(v: f32) -> Vec<featureproxy_client::Value> {
    vec![featureproxy_client::Value::F32(v); 16]
}

/// Runs a future to completion from synchronous code inside a multi-thread runtime (for the
/// closures of [`eventually`]).
pub fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// The text of examples/features.toml.
pub fn example_registry() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/features.toml"
    ))
    .unwrap()
}

/// A port nothing listens on, never handed out twice in this test process: the tests of one
/// binary run in parallel, and the kernel may offer a port that another test was just given but
/// has not bound yet (two redis-servers would then race for it, and one test would talk to the
/// other's server).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Waits until something accepts connections on `port`.
pub fn wait_port(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nothing listens on port {port} after 20s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `f` until it returns Some, for events that have no notification of their own (a breaker
/// closing, Redis coming back). Fails the test after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `key` of `view` again until the answer comes from the hot cache, and returns that
/// answer; fails if the second read after the first still does not. Why a read can miss once
/// more after a PUT: Redis also reports the PUT's own write to the proxy's tracking connection,
/// at a moment of its own, and a notice that lands after a read cached the row drops it. One
/// write, one notice per shard: the read after that comes from the cache.
pub async fn read_until_cached(
    c: &featureproxy_client::Client,
    view: &str,
    key: &str,
) -> featureproxy_client::Batch {
    let mut misses = Vec::new();
    for _ in 0..2 {
        let b = c.get(view, &[key]).await.unwrap();
        if b.status(0).cached {
            return b;
        }
        misses.push(b.status(0).status);
    }
    panic!("{view} {key}: two reads in a row missed the hot cache ({misses:?})");
}

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Extra redis-server arguments, kept for restarts.
    extra: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// A redis-server with extra arguments (e.g. `["--rename-command", "EVAL", ""]`).
    pub fn start_with(extra: &[&str]) -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        wait_port(self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: it keeps nothing on disk).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// `SET key value` through the real `redis-cli` (value on stdin: binary-safe), as an
    /// operator or another writer would.
    pub fn cli_set(&self, key: &str, value: &[u8]) {
        let mut child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "-x", "SET", key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli must be installed");
        child.stdin.take().unwrap().write_all(value).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.starts_with(b"OK"),
            "redis-cli SET {key}: {out:?}"
        );
    }

    /// One command over RESP, arguments as raw bytes; returns the raw reply.
    pub fn command(&self, args: &[&[u8]]) -> Vec<u8> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&req).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let n = s.read(&mut buf).unwrap();
        buf.truncate(n);
        buf
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A frozen server does not die of SIGKILL until it is continued on some systems.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// The proxy binary, serving examples/features.toml plus `server_toml` settings.
pub struct Proxy {
    child: Option<Child>,
    pub port: u16,
    pub stats_port: u16,
    _dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Proxy {
    pub fn start(redis: &Redis, shards: usize, server_toml: &str) -> Proxy {
        Proxy::start_with(&redis.url(), shards, server_toml, &[])
    }

    pub fn start_with(redis_url: &str, shards: usize, server_toml: &str, extra: &[&str]) -> Proxy {
        Proxy::start_custom(redis_url, shards, server_toml, &example_registry(), extra)
    }

    /// Like [`Proxy::start_with`], with a registry of the test's own.
    pub fn start_custom(
        redis_url: &str,
        shards: usize,
        server_toml: &str,
        registry: &str,
        extra: &[&str],
    ) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("features.toml");
        std::fs::write(&config, format!("[server]\n{server_toml}\n\n{registry}")).unwrap();
        let (port, stats_port) = (free_port(), free_port());
        let log = dir.path().join("proxy.log");
        let child = Command::new(env!("CARGO_BIN_EXE_featureproxy"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--stats-listen", &format!("127.0.0.1:{stats_port}")])
            .args(["--redis", redis_url])
            .args(["--shards", &shards.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_port(port);
        Proxy {
            child: Some(child),
            port,
            stats_port,
            _dir: dir,
            log,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The config file the proxy was started with (a reload reads it again).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("features.toml")
    }

    /// The proxy's process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the proxy runs").id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (fails the test past 20 s).
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("proxy running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("proxy did not exit within 20s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The proxy's resident memory, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.child.as_ref().expect("proxy running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .expect("VmRSS in /proc/PID/status");
        kb * 1024
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// GET on the stats endpoint: (status code, body).
    pub fn http(&self, path: &str) -> (u16, String) {
        self.http_with("GET", path, &[])
    }

    /// A request with `method` and extra `headers` to the stats endpoint: (status code, body).
    pub fn http_with(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.stats_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    }

    /// Sends the proxy SIGHUP (reload).
    pub fn sighup(&self) {
        // SAFETY: kill takes plain integers.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, libc::SIGHUP) }, 0);
    }

    /// Waits until the proxy has applied (or refused: `result`) `n` reloads in all.
    pub fn wait_reloads(&self, result: &str, n: f64) {
        eventually(
            Duration::from_secs(5),
            &format!("{n} {result} reloads"),
            || {
                let got = self.metric("featureproxy_reloads_total", &[("result", result)]);
                (got >= n).then_some(())
            },
        );
    }

    /// The sum of every sample of metric `name` whose labels include all of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, body) = self.http("/metrics");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (n, rest) = series.split_once('{').unwrap_or((series, ""));
                (n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // A failing test shows what the proxy logged: its log dies with the temporary folder.
        if std::thread::panicking() {
            eprintln!("---- the proxy's log ----\n{}", self.logs());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A blocking, frame-level connection for tests that need exact bytes on the wire.
pub struct RawConn {
    pub stream: TcpStream,
    buf: BytesMut,
    next_id: u32,
}

impl RawConn {
    pub fn connect(port: u16) -> RawConn {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        RawConn {
            stream,
            buf: BytesMut::new(),
            next_id: 1,
        }
    }

    pub fn send(&mut self, req: &Request) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = BytesMut::new();
        req.encode(&mut out, id);
        self.stream.write_all(&out).unwrap();
        id
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next frame, or None when the server closed the connection.
    pub fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = decode_frame(&mut self.buf, u32::MAX).unwrap() {
                return Some(f);
            }
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading from the proxy: {e}"),
            }
        }
    }

    pub fn call(&mut self, req: &Request) -> Response {
        let id = self.send(req);
        let f = self.recv().expect("connection closed before the reply");
        assert_eq!(f.request_id, id);
        Response::decode(
            &f,
            &Limits {
                max_frame: u32::MAX,
                max_batch: u32::MAX,
            },
        )
        .unwrap()
    }

    pub fn schema(&mut self, view: &str) -> SchemaReply {
        match self.call(&Request::Schema { view: view.into() }) {
            Response::Schema(s) => s,
            other => panic!("SCHEMA {view}: {other:?}"),
        }
    }

    /// Expects an ERROR reply to `req`.
    pub fn expect_error(&mut self, req: &Request) -> ProtocolError {
        match self.call(req) {
            Response::Error(e) => e,
            other => panic!("expected an ERROR frame, got {other:?}"),
        }
    }

    /// True once the server has closed the connection (reads EOF).
    pub fn is_closed(&mut self) -> bool {
        self.recv().is_none()
    }
}

/// A loadgen open-loop read of `user_features` (keys `u:N`, Zipf 0.99 over `entities`, 1 to 10
/// entities per GET) at `rate` GETs/s for `duration`, verifying every reply: the load that
/// tests run beside what they change (a reload, TLS).
pub fn user_features_load(
    target: &str,
    tls: Option<featureproxy_client::TlsConnector>,
    schema: &featureproxy_client::Schema,
    entities: u64,
    rate: f64,
    connections: usize,
    duration: Duration,
) -> loadgen::driver::RunConfig {
    loadgen::driver::RunConfig {
        target: loadgen::spec::Target::Proxy(target.to_string()),
        tls,
        view: "user_features".into(),
        proto: loadgen::driver::Proto::Fp {
            view_id: schema.view_id(),
            schema_id: schema.schema_id(),
            get_flags: 0,
            deadline_us: 0,
            dtypes: schema.features().iter().map(|f| f.dtype).collect(),
            token: String::new(),
        },
        workload: std::sync::Arc::new(
            loadgen::workload::Workload::new(
                entities,
                0.99,
                1,
                loadgen::spec::BatchSpec { min: 1, max: 10 },
                0.0,
                None,
            )
            .unwrap(),
        ),
        key_prefix: b"u:".to_vec(),
        rate: Some(rate),
        burst: None,
        connections,
        inflight: 32,
        threads: 1,
        warmup: Duration::from_millis(100),
        duration,
        timeout: Duration::from_secs(2),
        verify_every: 1,
        progress: false,
        server_pids: Vec::new(),
    }
}
