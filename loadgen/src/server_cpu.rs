//! CPU time of the server processes (`run --server-pid`) over the measured window, from
//! `/proc/PID/stat`. Latency says how fast a server answers; this says what each answer cost it,
//! which is what a proxy is compared on once its latency is good enough.
//!
//! `utime + stime` (fields 14 and 15) count every thread of the process, in clock ticks
//! (`sysconf(_SC_CLK_TCK)`, usually 100 per second), so one sample is exact to a tick: over a
//! 10 s window that is a fraction of a percent of what a busy server uses, over 1 s it is not.
//! The driver samples at the start and at the end of the measured window (see `driver::run`).

use std::fs;
use std::time::Instant;

/// What one read of `/proc/PID/stat` tells: the CPU used so far, and enough to notice that the
/// process went away (or that its pid now belongs to another process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// One-letter scheduler state (`R`, `S`, `Z` for an exited, unreaped process, ...).
    pub state: char,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// When the process started, in clock ticks since boot: a pid reused by a new process has a
    /// different one.
    pub start_ticks: u64,
}

/// Parses the contents of `/proc/PID/stat`. The command name (field 2) is in parentheses and may
/// itself hold spaces and parentheses, so the fields are counted from the *last* `)`.
pub fn parse_stat(text: &str) -> Result<Stat, String> {
    let close = text
        .rfind(')')
        .ok_or_else(|| "no ')' closing the command name".to_string())?;
    // After the name: field 3 (state) is index 0, so field N is index N - 3.
    let fields: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| -> Result<&str, String> {
        fields
            .get(n - 3)
            .copied()
            .ok_or_else(|| format!("only {} fields, field {n} missing", fields.len() + 2))
    };
    let num = |n: usize| -> Result<u64, String> {
        let f = field(n)?;
        f.parse()
            .map_err(|_| format!("field {n} is {f:?}, not a number"))
    };
    Ok(Stat {
        state: field(3)?.chars().next().unwrap_or('?'),
        cpu_ticks: num(14)? + num(15)?,
        start_ticks: num(22)?,
    })
}

/// Clock ticks per second, the unit of `/proc/PID/stat`'s times.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf takes an integer name and has no other effect.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn read_stat(pid: u32) -> Result<Stat, String> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_stat(&text).map_err(|e| format!("{path}: {e}"))
}

/// The process name, from `/proc/PID/comm` (at most 15 bytes, as the kernel keeps it).
fn read_comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A process whose CPU time is being measured: the sample taken at the start of the window.
#[derive(Debug, Clone)]
pub struct Probe {
    pub pid: u32,
    pub name: String,
    start: Stat,
}

impl Probe {
    /// Checks that `pid` is a live process and takes the first sample.
    pub fn start(pid: u32) -> Result<Probe, String> {
        let start = read_stat(pid).map_err(|e| {
            format!("--server-pid {pid}: no such process ({e}); give the pid of a running server, e.g. $(pidof redis-server)")
        })?;
        if matches!(start.state, 'Z' | 'X') {
            return Err(format!(
                "--server-pid {pid}: the process has exited (state {}); give the pid of a running server",
                start.state
            ));
        }
        Ok(Probe {
            pid,
            name: read_comm(pid),
            start,
        })
    }

    /// Takes the second sample: the CPU seconds used since [`Probe::start`], or why there are
    /// none.
    pub fn finish(&self, window_s: f64) -> ServerCpu {
        let cpu_s = match read_stat(self.pid) {
            Err(_) => Err("exited during the run".to_string()),
            Ok(s) if s.start_ticks != self.start.start_ticks => {
                Err("exited during the run (its pid now belongs to another process)".to_string())
            }
            Ok(s) if matches!(s.state, 'Z' | 'X') => Err("exited during the run".to_string()),
            Ok(s) => {
                Ok(s.cpu_ticks.saturating_sub(self.start.cpu_ticks) as f64 / ticks_per_second())
            }
        };
        ServerCpu {
            pid: self.pid,
            name: self.name.clone(),
            cpu_s,
            window_s,
        }
    }
}

/// One server's CPU over the measured window.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerCpu {
    pub pid: u32,
    pub name: String,
    /// CPU seconds (user + system, all threads), or why it could not be measured.
    pub cpu_s: Result<f64, String>,
    /// Wall-clock seconds between the two samples.
    pub window_s: f64,
}

/// The two samples of a run, taken by the driver's main thread when the measured window opens
/// and when it closes (it owns the clock that defines the window).
#[derive(Debug)]
pub struct Window {
    /// (pid, name) of each server, checked when the run was set up.
    servers: Vec<(u32, String)>,
    opened: Option<(Instant, Vec<Option<Probe>>)>,
}

impl Window {
    /// Fails, naming it, when a pid is not a live process: better now than after the run.
    pub fn new(pids: &[u32]) -> Result<Window, String> {
        let servers = pids
            .iter()
            .map(|&pid| Probe::start(pid).map(|p| (pid, p.name)))
            .collect::<Result<_, _>>()?;
        Ok(Window {
            servers,
            opened: None,
        })
    }

    pub fn is_open(&self) -> bool {
        self.opened.is_some()
    }

    /// Takes the first samples; a server gone since [`Window::new`] is remembered as such.
    pub fn open(&mut self) {
        let probes = self
            .servers
            .iter()
            .map(|(pid, _)| Probe::start(*pid).ok())
            .collect();
        self.opened = Some((Instant::now(), probes));
    }

    /// Takes the second samples: each server's CPU since [`Window::open`].
    pub fn close(&self) -> Vec<ServerCpu> {
        let (window_s, probes) = match &self.opened {
            Some((t, probes)) => (t.elapsed().as_secs_f64(), Some(probes)),
            None => (0.0, None),
        };
        self.servers
            .iter()
            .enumerate()
            .map(|(i, (pid, name))| match probes.map(|p| &p[i]) {
                Some(Some(p)) => p.finish(window_s),
                Some(None) => ServerCpu {
                    pid: *pid,
                    name: name.clone(),
                    cpu_s: Err("exited before the measured window began".into()),
                    window_s,
                },
                None => ServerCpu {
                    pid: *pid,
                    name: name.clone(),
                    cpu_s: Err("the measured window never began".into()),
                    window_s,
                },
            })
            .collect()
    }
}

/// µs of CPU per unit of work (request or entity); None without work or without a figure.
pub fn per(cpu_s: Option<f64>, count: u64) -> Option<f64> {
    match cpu_s {
        Some(s) if count > 0 => Some(s * 1e6 / count as f64),
        _ => None,
    }
}

/// The CPU seconds of all servers together; None when one of them could not be measured.
pub fn total(cpus: &[ServerCpu]) -> Option<f64> {
    if cpus.is_empty() {
        return None;
    }
    cpus.iter().map(|c| c.cpu_s.as_ref().ok().copied()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line with the fields after the name: state, ppid, ... utime (14) = 1500,
    // stime (15) = 250, ..., starttime (22) = 98765.
    const TAIL: &str = "S 1 2 3 4 5 6 7 8 9 10 1500 250 13 14 15 16 17 18 98765 21 22";

    #[test]
    fn parses_a_plain_name() {
        let s = parse_stat(&format!("123 (redis-server) {TAIL}\n")).unwrap();
        assert_eq!(
            s,
            Stat {
                state: 'S',
                cpu_ticks: 1750,
                start_ticks: 98765
            }
        );
    }

    #[test]
    fn parses_a_name_with_spaces_and_parentheses() {
        let s = parse_stat(&format!("77 ((my (odd) proc)) {TAIL}")).unwrap();
        assert_eq!(s.cpu_ticks, 1750);
        assert_eq!(s.start_ticks, 98765);
        let s = parse_stat(&format!("77 (a) b) 1 2 (x) {TAIL}")).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.cpu_ticks, 1750);
    }

    #[test]
    fn refuses_truncated_or_garbled_lines() {
        assert!(parse_stat("123 redis-server S 1 2").is_err());
        assert!(parse_stat("123 (x) S 1 2 3").unwrap_err().contains("field"));
        let bad = TAIL.replace("1500", "lots");
        assert!(parse_stat(&format!("1 (x) {bad}"))
            .unwrap_err()
            .contains("field 14"));
    }

    #[test]
    fn samples_this_process() {
        let p = Probe::start(std::process::id()).unwrap();
        assert!(!p.name.is_empty());
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 60 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let c = p.finish(0.06);
        let cpu = c.cpu_s.unwrap();
        assert!(cpu >= 0.0 && cpu.is_finite(), "{cpu} after {x} spins");
    }

    #[test]
    fn a_missing_pid_is_named() {
        // Pids are below 2^22 on Linux.
        let e = Probe::start(4_000_000_000).unwrap_err();
        assert!(e.contains("4000000000"), "{e}");
    }

    #[test]
    fn totals_need_every_figure() {
        let c = |cpu_s| ServerCpu {
            pid: 1,
            name: "x".into(),
            cpu_s,
            window_s: 1.0,
        };
        assert_eq!(total(&[c(Ok(1.0)), c(Ok(0.5))]), Some(1.5));
        assert_eq!(total(&[c(Ok(1.0)), c(Err("exited".into()))]), None);
        assert_eq!(total(&[]), None);
        assert_eq!(per(Some(2.0), 1_000_000), Some(2.0));
        assert_eq!(per(Some(2.0), 0), None);
    }
}
