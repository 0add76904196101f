//! A private redis-server for a newcomer who runs the proxy without `--redis`: started on a free
//! loopback port, stopped when the proxy exits, however it exits.
//!
//! A proxy that stops normally (SIGTERM, SIGINT, an error at start, a panic that unwinds through
//! `server::run`) drops its [`RedisChild`], which kills and reaps the server. A proxy that dies
//! without running destructors (SIGKILL, SIGQUIT, an abort, a segfault) cannot; on Linux the
//! kernel stops the server then, because the child asks for `PR_SET_PDEATHSIG` (SIGKILL) before
//! it execs redis-server. That signal is sent when the *thread* that forked the child exits, so
//! [`RedisChild::start`] refuses to run on any thread but the process's main one, which lives
//! exactly as long as the process.
//!
//! The server runs in a process group of its own: a Ctrl-C (or Ctrl-\) at the terminal reaches
//! only the proxy, which drains with its Redis still up and stops the server last.

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
    #[error("the private redis-server must be started from the main thread: the kernel stops it when the thread that started it exits (PR_SET_PDEATHSIG)")]
    NotMainThread,
}

pub struct RedisChild {
    child: Child,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl RedisChild {
    /// Starts redis-server on a free loopback port and waits until it accepts connections.
    /// Call it from the main thread (see the module's notes); elsewhere it fails with
    /// [`RedisChildError::NotMainThread`] before starting anything.
    pub fn start() -> Result<RedisChild, RedisChildError> {
        if !on_main_thread() {
            return Err(RedisChildError::NotMainThread);
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(RedisChildError::Spawn)?
            .port();
        let dir = std::env::temp_dir().join(format!("featureproxy-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(RedisChildError::Spawn)?;
        let mut command = Command::new("redis-server");
        command
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
            .stderr(Stdio::null());
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|e| match e.kind() {
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

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// Whether the calling thread is the process's main thread (its thread id is the process id).
#[cfg(target_os = "linux")]
fn on_main_thread() -> bool {
    // SAFETY: gettid and getpid take no arguments and cannot fail.
    unsafe { libc::gettid() == libc::getpid() }
}

#[cfg(not(target_os = "linux"))]
fn on_main_thread() -> bool {
    true
}

/// Has the kernel SIGKILL the child when the thread that forks it exits (the main thread, so
/// when the proxy exits, by any means). A parent that died between the fork and the prctl is not
/// seen by the prctl: the child then finds it has been re-parented and does not exec.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid is async-signal-safe and cannot fail.
    let parent = unsafe { libc::getpid() };
    let in_child = move || {
        // Only async-signal-safe calls between fork and exec: prctl, getppid, and an io::Error
        // made from an errno, which does not allocate.
        // SAFETY: PR_SET_PDEATHSIG takes a signal number; the rest are unused.
        let set = unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if set != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: getppid cannot fail.
        if unsafe { libc::getppid() } != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe calls (above).
    unsafe {
        command.pre_exec(in_child);
    }
}

/// Elsewhere the server is stopped by the proxy's own exit path only.
#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Started from a thread that ends before the proxy, the server would be killed with it while
    /// the proxy serves on: start refuses, before it starts anything.
    #[cfg(target_os = "linux")]
    #[test]
    fn refuses_to_start_off_the_main_thread() {
        let result = std::thread::spawn(RedisChild::start).join().unwrap();
        assert!(
            matches!(result, Err(RedisChildError::NotMainThread)),
            "started off the main thread: {:?}",
            result.as_ref().map(|c| c.port)
        );
    }
}
