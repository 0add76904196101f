//! TLS parts for tests: the committed certificates (tests/fixtures/tls, remade by its
//! remake.sh) and redis-servers that speak only TLS (`--port 0`), alone or as a 3-master
//! Redis Cluster with `tls-cluster yes`, driven through the real `redis-cli --tls`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, wait_port};

/// A file of tests/fixtures/tls, e.g. "ca.crt".
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls")).join(name)
}

/// A fixture's path as TOML string contents.
pub fn toml_path(name: &str) -> String {
    fixture(name).display().to_string()
}

/// One redis-server whose only port is its TLS port, with the fixtures' server certificate.
pub struct TlsRedis {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    /// A standalone server; `client_auth` is Redis's `tls-auth-clients` (yes, optional, no).
    pub fn start(client_auth: &str) -> TlsRedis {
        TlsRedis::spawn(free_port(), client_auth, &[])
    }

    fn spawn(port: u16, client_auth: &str, extra: &[&str]) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(fixture("server.crt"))
            .arg("--tls-key-file")
            .arg(fixture("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(fixture("ca.crt"))
            .args(["--tls-auth-clients", client_auth])
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        wait_port(port);
        TlsRedis {
            child: Some(child),
            port,
            _dir: dir,
        }
    }

    /// `rediss://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// One command through `redis-cli --tls` (with the fixtures' client certificate), the last
    /// argument on stdin when `stdin` is given (binary-safe); returns what redis-cli printed.
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        cli(self.port, false, args, stdin)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `redis-cli --tls` against `port`; `cluster` follows redirections (`-c`).
fn cli(port: u16, cluster: bool, args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "--tls"])
        .arg("--cacert")
        .arg(fixture("ca.crt"))
        .arg("--cert")
        .arg(fixture("client.crt"))
        .arg("--key")
        .arg(fixture("client.key"));
    if cluster {
        cmd.arg("-c");
    }
    if stdin.is_some() {
        cmd.arg("-x");
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli must be installed");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis Cluster of three masters, no replicas, every port TLS only (`tls-cluster yes`: the
/// cluster bus too), created with `redis-cli --tls --cluster create`.
pub struct TlsCluster {
    pub nodes: Vec<TlsRedis>,
}

impl TlsCluster {
    pub fn start() -> TlsCluster {
        let mut attempt = 1;
        loop {
            match TlsCluster::try_start() {
                Ok(c) => return c,
                // A port (or its bus port, +10000) taken meanwhile: new ports.
                Err(e) if attempt < 3 => eprintln!("TLS cluster start attempt {attempt}: {e}"),
                Err(e) => panic!("TLS cluster start failed 3 times; last: {e}"),
            }
            attempt += 1;
        }
    }

    fn try_start() -> Result<TlsCluster, String> {
        let ports: Vec<u16> = (0..3).map(|_| bus_free_port()).collect();
        let nodes: Vec<TlsRedis> = ports
            .iter()
            .map(|&p| {
                let conf = format!("nodes-{p}.conf");
                TlsRedis::spawn(
                    p,
                    "optional",
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--tls-cluster",
                        "yes",
                        "--tls-replication",
                        "yes",
                    ],
                )
            })
            .collect();
        let mut create = vec!["--cluster".to_string(), "create".to_string()];
        create.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--tls")
            .arg("--cacert")
            .arg(fixture("ca.crt"))
            .arg("--cert")
            .arg(fixture("client.crt"))
            .arg("--key")
            .arg(fixture("client.key"))
            .args(&create);
        let out = cmd.output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("cluster create: {out:?}"));
        }
        let cluster = TlsCluster { nodes };
        let start = Instant::now();
        while !cluster.nodes.iter().all(|n| {
            n.cli(&["CLUSTER", "INFO"], None)
                .contains("cluster_state:ok")
        }) {
            if start.elapsed() > Duration::from_secs(30) {
                return Err("the TLS cluster did not reach cluster_state:ok in 30s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(cluster)
    }

    /// `rediss-cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let mut url = format!("rediss-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", n.port));
        }
        url
    }

    /// `SET key` (value on stdin) through `redis-cli --tls -c`, following the redirection to the
    /// key's master.
    pub fn cli_set(&self, key: &str, value: &[u8]) {
        let out = cli(self.nodes[0].port, true, &["SET", key], Some(value));
        assert!(out.contains("OK"), "SET {key}: {out}");
    }
}

/// A free port whose cluster bus port (+10000) is free too.
fn bus_free_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55535 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
}
