//! A private redis-server for a newcomer who runs the proxy without `--redis`: started on a free
//! loopback port, stopped when the proxy exits.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum RedisChildError {
    #[error("no --redis given and redis-server is not installed, so the proxy cannot start its own: install it (Debian/Ubuntu: `apt-get install redis-server`; macOS: `brew install redis`) or pass --redis redis://HOST:PORT")]
    NotInstalled,
    #[error("could not start redis-server: {0}")]
    Spawn(std::io::Error),
    #[error("redis-server started but did not accept connections on 127.0.0.1:{0} within 10s")]
    NoAnswer(u16),
}

pub struct RedisChild {
    child: Child,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl RedisChild {
    pub fn start() -> Result<RedisChild, RedisChildError> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(RedisChildError::Spawn)?
            .port();
        let dir = std::env::temp_dir().join(format!("featureproxy-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(RedisChildError::Spawn)?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => RedisChildError::NotInstalled,
                _ => RedisChildError::Spawn(e),
            })?;
        let mut me = RedisChild { child, port, dir };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10)
                || matches!(me.child.try_wait(), Ok(Some(_)))
            {
                me.stop();
                return Err(RedisChildError::NoAnswer(port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        self.stop();
    }
}
