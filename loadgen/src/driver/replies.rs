//! What a reply counts for: matching it to its request's slot, recording its latency (from the
//! intended and from the actual send time) into the worker's histograms and per-second
//! counters, tallying entity statuses and errors, and, every `--verify-every` replies, checking
//! the rows against the values `loadgen seed` wrote. It is separate from `receiver` because it
//! is pure bookkeeping on one decoded reply, with no I/O or connection state.

use std::sync::atomic::Ordering;

use featureproxy_protocol::{Response, Status};

use super::receiver::Worker;
use super::shared::Conn;
use super::{Measured, Proto};
use crate::keys::write_row;
use crate::resp::Elem;
use crate::workload::Entity;

/// Latency bookkeeping common to both protocols; false when the request is not measured.
fn record(worker: &Worker, st: &mut Measured, intended: u64, sent: u64, now: u64) -> bool {
    let sh = &worker.shared;
    sh.live_done.fetch_add(1, Ordering::Relaxed);
    if !sh.measured(intended) {
        return false;
    }
    let lat = (now.saturating_sub(intended) / 1000).max(1);
    st.hist.saturating_record(lat);
    st.uhist
        .saturating_record((now.saturating_sub(sent) / 1000).max(1));
    st.responses += 1;
    if now < sh.end_ns {
        st.in_window += 1;
    }
    let s = st.second(sh.sec(now));
    s.hist.saturating_record(lat);
    s.responses += 1;
    true
}

pub(super) fn on_fp_frame(
    worker: &Worker,
    conn: &Conn,
    frame: featureproxy_protocol::Frame,
    now: u64,
    scratch: &mut Vec<u8>,
) {
    let sh = &worker.shared;
    let id = frame.request_id;
    let k = conn.slot(id as u64).k.load(Ordering::Acquire);
    let mut st = worker.st.borrow_mut();
    if k as u32 != id {
        st.error("stray_reply", sh.sec(now));
        return;
    }
    let Some((intended, sent)) = conn.take(k) else {
        st.error("stray_reply", sh.sec(now));
        return;
    };
    if !record(worker, &mut st, intended, sent, now) {
        return;
    }
    let sec = sh.sec(now);
    match Response::decode(&frame, &sh.limits) {
        Ok(Response::Get(g)) => {
            st.entities += g.n as u64;
            if now < sh.end_ns {
                st.in_window_entities += g.n as u64;
            }
            let mut degraded = 0;
            for &b in g.status_bytes() {
                st.statuses[(b & 0x7f).min(5) as usize] += 1;
                st.cached += u64::from(b & 0x80 != 0);
                degraded += u64::from(b & 0x7f == Status::Degraded as u8);
            }
            st.second(sec).degraded += degraded;
            if sh.cfg.verify_every > 0 && k % sh.cfg.verify_every == 0 {
                verify_fp(worker, &mut st, conn, k, &g, scratch);
            }
        }
        Ok(Response::Error(e)) => {
            sh.live_errors.fetch_add(1, Ordering::Relaxed);
            st.error(&format!("server:{}", e.code.name()), sec);
        }
        Ok(_) => st.error("unexpected_reply", sec),
        Err(_) => st.error("decode", sec),
    }
}

/// Checks the rows of a GET reply against the values `loadgen seed` wrote.
fn verify_fp(
    worker: &Worker,
    st: &mut Measured,
    conn: &Conn,
    k: u64,
    g: &featureproxy_protocol::GetResponse,
    expected: &mut Vec<u8>,
) {
    let sh = &worker.shared;
    let Proto::Fp { dtypes, .. } = &sh.cfg.proto else {
        return;
    };
    let mut i = 0usize;
    let n = g.n as usize;
    let (mut checked, mut bad) = (0u64, 0u64);
    let mut example = None;
    sh.cfg
        .workload
        .entities_of(conn.index, sh.cfg.connections as u64, k, |e, _| {
            if i >= n {
                return;
            }
            let status = g.status(i).status;
            if let Entity::Id(id) = e {
                let served = matches!(status, Status::Fresh | Status::Stale);
                if served {
                    checked += 1;
                    let problem = if id >= sh.warm_ids {
                        Some("a never-seeded (cold) key had a value".to_string())
                    } else {
                        expected.clear();
                        write_row(expected, dtypes, id);
                        (g.row(i) != &expected[..]).then(|| "row differs from f(id, j)".to_string())
                    };
                    if let Some(p) = problem {
                        bad += 1;
                        example.get_or_insert_with(|| format!("entity {id}: {p}"));
                    }
                }
            }
            i += 1;
        });
    if i != n {
        bad += 1;
        example.get_or_insert_with(|| format!("reply has {n} entities, the request {i}"));
    }
    st.verify_checked += checked;
    st.verify_bad += bad;
    if bad > 0 {
        let sec = sh.sec(sh.now_ns());
        st.error("wrong_value", sec);
        if st.verify_example.is_none() {
            st.verify_example = example;
        }
    }
}

pub(super) fn on_resp_reply(
    worker: &Worker,
    conn: &Conn,
    k: u64,
    raw: &[u8],
    elems: &[Elem],
    now: u64,
) {
    let sh = &worker.shared;
    let mut st = worker.st.borrow_mut();
    let Some((intended, sent)) = conn.take(k) else {
        st.error("stray_reply", sh.sec(now));
        return;
    };
    if !record(worker, &mut st, intended, sent, now) {
        return;
    }
    let sec = sh.sec(now);
    if let Some(Elem::Error(a, b)) = elems.iter().find(|e| matches!(e, Elem::Error(..))) {
        let msg = String::from_utf8_lossy(&raw[*a..*b]);
        let word = msg.split_whitespace().next().unwrap_or("ERR").to_string();
        sh.live_errors.fetch_add(1, Ordering::Relaxed);
        st.error(&format!("resp:{word}"), sec);
        return;
    }
    if now < sh.end_ns {
        st.in_window_entities += elems.len() as u64;
    }
    for e in elems {
        st.entities += 1;
        let status = match e {
            Elem::Nil => Status::Missing,
            // A stored value: format byte 1, computed_at, row.
            Elem::Bulk(a, b) if b - a >= 9 && raw[*a] == 1 => Status::Fresh,
            _ => Status::Invalid,
        };
        st.statuses[status as usize] += 1;
    }
}
