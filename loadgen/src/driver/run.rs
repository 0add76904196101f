//! [`run`]: builds the shared state and the connections, starts a receiver (and, in open loop, a
//! sender) thread per worker, holds them at the start line until every connection is open,
//! prints progress while they work and merges what each measured. It is separate because it is
//! the only code that runs on the caller's thread; the per-thread loops live in `sender` and
//! `receiver`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use featureproxy_protocol::Limits;

use super::receiver::receiver_main;
use super::sender::sender_main;
use super::shared::{Conn, Shared, Slot, Wake, Writer};
use super::{Measured, RunConfig};
use crate::server_cpu::Window;

/// Runs the workload; returns what was measured. Fails only when the connections cannot be
/// opened at the start.
pub fn run(cfg: RunConfig) -> Result<Measured, String> {
    let mut cpu = Window::new(&cfg.server_pids)?;
    let threads = cfg.threads.clamp(1, cfg.connections.max(1));
    let conns_total = cfg.connections.max(1);
    let warm_ns = cfg.warmup.as_nanos() as u64;
    let end_ns = warm_ns + cfg.duration.as_nanos() as u64;
    let cap = (cfg.inflight.max(1) * 4).next_power_of_two();
    let shared = Arc::new(Shared {
        warm_ids: cfg.workload.warm_count(),
        cfg: RunConfig {
            threads,
            connections: conns_total,
            ..cfg
        },
        t0: OnceLock::new(),
        warm_ns,
        end_ns,
        limits: Limits {
            max_frame: u32::MAX,
            max_batch: u32::MAX,
        },
        senders_done: AtomicUsize::new(0),
        live_sent: AtomicU64::new(0),
        live_done: AtomicU64::new(0),
        live_errors: AtomicU64::new(0),
    });
    let open = !shared.closed();
    let wakes: Vec<Arc<Wake>> = (0..threads)
        .map(|_| {
            Arc::new(Wake {
                waiting: AtomicBool::new(false),
                thread: OnceLock::new(),
            })
        })
        .collect();
    let conns: Vec<Arc<Conn>> = (0..conns_total)
        .map(|i| {
            Arc::new(Conn {
                index: i as u64,
                slots: (0..cap)
                    .map(|_| Slot {
                        k: AtomicU64::new(u64::MAX),
                        intended: AtomicU64::new(0),
                        sent: AtomicU64::new(0),
                    })
                    .collect(),
                mask: cap as u64 - 1,
                inflight: AtomicU32::new(0),
                writer: Mutex::new(Writer {
                    stream: None,
                    tls: None,
                    next_k: 0,
                    buf: BytesMut::with_capacity(64 * 1024),
                    keys: Vec::new(),
                    ends: Vec::new(),
                    resp_out: Vec::new(),
                }),
                close_reason: Mutex::new(None),
                wake: wakes[i % threads].clone(),
            })
        })
        .collect();

    // Main + receivers + senders meet at the start line once every connection is open.
    let go = Arc::new(Barrier::new(1 + threads + if open { threads } else { 0 }));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (w, wake) in wakes.iter().enumerate() {
        let mine: Vec<Arc<Conn>> = conns
            .iter()
            .filter(|c| c.index as usize % threads == w)
            .cloned()
            .collect();
        let (sh, go2, tx) = (shared.clone(), go.clone(), ready_tx.clone());
        let list = mine.clone();
        receivers.push(
            std::thread::Builder::new()
                .name(format!("loadgen-recv-{w}"))
                .spawn(move || receiver_main(sh, list, go2, tx))
                .map_err(|e| format!("cannot start a thread: {e}"))?,
        );
        if open {
            let (sh, go2, wake) = (shared.clone(), go.clone(), wake.clone());
            senders.push(
                std::thread::Builder::new()
                    .name(format!("loadgen-send-{w}"))
                    .spawn(move || sender_main(sh, mine, go2, wake))
                    .map_err(|e| format!("cannot start a thread: {e}"))?,
            );
        }
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a worker thread died while connecting".to_string()),
        }
    }
    // Start the clock even on failure so every thread gets past the barrier and stops.
    let _ = shared.t0.set(Instant::now());
    if failure.is_some() {
        shared.senders_done.store(usize::MAX / 2, Ordering::Release);
    }
    go.wait();

    let progress = shared.cfg.progress && failure.is_none();
    let total_ns = end_ns;
    let mut last = Instant::now();
    let mut server_cpu = None;
    loop {
        // The server CPU samples bracket the measured window as closely as this thread can wake:
        // it sleeps until the window's start or end rather than waiting for the next tick.
        let now = shared.now_ns();
        if failure.is_none() && !cpu.is_open() && now >= warm_ns {
            cpu.open();
        }
        if cpu.is_open() && server_cpu.is_none() && now >= end_ns {
            server_cpu = Some(cpu.close());
        }
        if receivers.iter().all(|h| h.is_finished()) {
            break;
        }
        let next = if now < warm_ns {
            warm_ns
        } else if now < end_ns {
            end_ns
        } else {
            u64::MAX
        };
        std::thread::sleep(Duration::from_nanos((next - now).min(50_000_000)));
        if progress && last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let now = shared.now_ns();
            let phase = if now < warm_ns {
                "warm-up"
            } else if now < end_ns {
                "measuring"
            } else {
                "draining"
            };
            eprint!(
                "\r\x1b[2K[loadgen] {:>5.1}s / {:.1}s {phase}: sent {}, answered {}, errors {}",
                now as f64 / 1e9,
                total_ns as f64 / 1e9,
                shared.live_sent.load(Ordering::Relaxed),
                shared.live_done.load(Ordering::Relaxed),
                shared.live_errors.load(Ordering::Relaxed),
            );
        }
    }
    if progress {
        eprintln!();
    }
    let mut total = Measured::new();
    for h in senders {
        match h.join() {
            Ok(m) => total.merge(&m),
            Err(_) => return Err("a sender thread panicked".into()),
        }
    }
    for h in receivers {
        match h.join() {
            Ok(m) => total.merge(&m),
            Err(_) => return Err("a receiver thread panicked".into()),
        }
    }
    total.server_cpu = server_cpu.unwrap_or_else(|| cpu.close());
    match failure {
        Some(e) => Err(e),
        None => Ok(total),
    }
}
