//! The open-loop sender thread: it owns the schedule of its worker's connections, sleeps until
//! the next request is due (with a fine timer slack), sends everything due stamped with its
//! intended time, counts late and unsent requests, and warns when it falls behind. It is
//! separate because it is a plain OS thread with its own timing concerns, unlike the async
//! receiver; closed-loop runs have no sender at all.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::shared::{Conn, Shared, Wake};
use super::Measured;

fn set_fine_timer_slack() {
    // Linux rounds nanosleep wake-ups up by the thread's timer slack (50 µs by default); 1 µs
    // keeps the schedule honest at sub-millisecond intervals.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes an integer and only affects the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
    }
}

pub(super) fn sender_main(
    shared: Arc<Shared>,
    conns: Vec<Arc<Conn>>,
    go: Arc<Barrier>,
    wake: Arc<Wake>,
) -> Measured {
    let _ = wake.thread.set(std::thread::current());
    set_fine_timer_slack();
    let mut st = Measured::new();
    go.wait();
    if shared.senders_done.load(Ordering::Acquire) >= usize::MAX / 2 {
        return st;
    }
    let rate = shared.cfg.rate.unwrap_or(1.0);
    // Connection c starts c/rate seconds in, so the connections' schedules interleave.
    let mut due: Vec<f64> = conns.iter().map(|c| c.index as f64 * 1e9 / rate).collect();
    let end = shared.end_ns as f64;
    let give_up = shared.end_ns + shared.cfg.timeout.as_nanos() as u64;
    let mut window = (0u64, 0u64, 0u64); // (second, sends, late)
    let mut last_warn: Option<Instant> = None;
    loop {
        let now = shared.now_ns();
        if due.iter().all(|d| *d >= end) {
            break;
        }
        if now > give_up {
            // Requests still unsent this long after the end never will be.
            for d in due.iter_mut() {
                while *d < end {
                    if shared.measured(*d as u64) {
                        st.error("unsent", shared.sec(*d as u64));
                    }
                    *d += shared.interval_ns(*d);
                }
            }
            break;
        }
        let mut blocked = false;
        let (sends0, late0) = (st.sends, st.late_sends);
        for (i, c) in conns.iter().enumerate() {
            if due[i] > now as f64 || due[i] >= end {
                continue;
            }
            let mut w = c.lock();
            if w.stream.is_none() {
                // Not connected (being reopened): each due request fails at once.
                while due[i] <= now as f64 && due[i] < end {
                    if shared.measured(due[i] as u64) {
                        st.error("not_connected", shared.sec(due[i] as u64));
                        shared.live_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    due[i] += shared.interval_ns(due[i]);
                }
                continue;
            }
            while due[i] <= now as f64 && due[i] < end {
                if !shared.register(c, &mut w, due[i] as u64, now, &mut st) {
                    blocked = true;
                    break;
                }
                due[i] += shared.interval_ns(due[i]);
            }
            shared.flush(c, &mut w);
        }
        // Falling behind: warn (at most every 5 s) when over 1% of a second's sends were late.
        let sec = now / 1_000_000_000;
        if sec != window.0 {
            if window.1 >= 100
                && window.2 * 100 > window.1
                && now >= shared.warm_ns
                && last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(5))
            {
                last_warn = Some(Instant::now());
                eprintln!(
                    "\nWARN loadgen is behind its schedule: {} of {} sends ({:.1}%) went out more than 1 ms late in second {}; latencies include that delay (counted from the intended send time). Lower --rate, add --connections/--inflight, or give loadgen more --threads/CPU.",
                    window.2,
                    window.1,
                    window.2 as f64 * 100.0 / window.1 as f64,
                    window.0
                );
            }
            window = (sec, 0, 0);
        }
        window.1 += st.sends - sends0;
        window.2 += st.late_sends - late0;

        let next = due.iter().copied().fold(f64::INFINITY, f64::min);
        let now = shared.now_ns();
        if blocked && next <= now as f64 {
            // Wait for a reply to free a slot (the receiver unparks us), at most 500 µs.
            wake.waiting.store(true, Ordering::Release);
            std::thread::park_timeout(Duration::from_micros(500));
            wake.waiting.store(false, Ordering::Release);
            continue;
        }
        let wait = next - now as f64;
        if wait > 0.0 {
            let wait = Duration::from_nanos(wait.min(50e6) as u64);
            if wait > Duration::from_millis(2) {
                std::thread::sleep(wait - Duration::from_millis(1));
            } else {
                std::thread::sleep(wait);
            }
        }
    }
    shared.senders_done.fetch_add(1, Ordering::AcqRel);
    st
}
