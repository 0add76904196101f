//! The receiver thread: a current-thread tokio runtime that opens its worker's connections
//! (with HELLO for featureproxy, after a TLS handshake for a TLS target), runs one read task per connection, times out stuck requests,
//! fails and reopens broken connections, and (in closed loop) sends the replacement requests.
//! It is separate from `replies`, which says what each reply it reads counts for: this file is
//! about connections, that one about bookkeeping.

use std::cell::RefCell;
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use featureproxy_client::rustls::ClientConnection;
use featureproxy_protocol::{decode_frame, Hello, Limits, Request, Response, VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::replies::{on_fp_frame, on_resp_reply};
use super::shared::{Conn, Shared};
use super::tls::{self, Session};
use super::{Measured, Proto};
use crate::resp::parse_reply;

pub(super) struct Worker {
    pub(super) shared: Arc<Shared>,
    pub(super) st: RefCell<Measured>,
}

pub(super) fn receiver_main(
    shared: Arc<Shared>,
    conns: Vec<Arc<Conn>>,
    go: Arc<Barrier>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> Measured {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start a tokio runtime: {e}")));
            go.wait();
            return Measured::new();
        }
    };
    let worker = Rc::new(Worker {
        shared: shared.clone(),
        st: RefCell::new(Measured::new()),
    });
    let local = tokio::task::LocalSet::new();
    let w2 = worker.clone();
    local.block_on(&rt, async move {
        let worker = w2;
        // Open every connection before the clock starts.
        let mut opened = Vec::new();
        for _ in &conns {
            match connect(&worker.shared).await {
                Ok(x) => opened.push(x),
                Err(e) => {
                    let _ = ready.send(Err(e));
                    go.wait();
                    return;
                }
            }
        }
        // Install the write halves before the start line, so the senders find them.
        let mut readers = Vec::new();
        for (c, o) in conns.iter().zip(opened) {
            if let Some(s) = o.shard {
                *worker.st.borrow_mut().shards.entry(s).or_insert(0) += 1;
            }
            let first_k = install(c, o.write, o.tls.clone());
            readers.push((c.clone(), o.read, o.tls, first_k));
        }
        let _ = ready.send(Ok(()));
        go.wait();
        if shared.senders_done.load(Ordering::Acquire) >= usize::MAX / 2 {
            return;
        }
        for (c, r, tls, first_k) in readers {
            tokio::task::spawn_local(conn_task(worker.clone(), c, r, tls, first_k));
        }
        // Time out stuck requests, and finish once everything sent has been answered.
        let timeout_ns = shared.cfg.timeout.as_nanos() as u64;
        let senders = if shared.closed() {
            0
        } else {
            shared.cfg.threads
        };
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = shared.now_ns();
            for c in &conns {
                let oldest = c
                    .slots
                    .iter()
                    .filter(|s| s.intended.load(Ordering::Acquire) != 0)
                    .map(|s| s.sent.load(Ordering::Acquire))
                    .min();
                if oldest.is_some_and(|t| now.saturating_sub(t) > timeout_ns) {
                    c.set_reason("timeout");
                    if let Some(s) = c.lock().stream.as_ref() {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
            }
            let sending_done =
                now >= shared.end_ns && shared.senders_done.load(Ordering::Acquire) >= senders;
            if sending_done
                && conns
                    .iter()
                    .all(|c| c.inflight.load(Ordering::Acquire) == 0)
            {
                break;
            }
            if now > shared.end_ns + 2 * timeout_ns + 1_000_000_000 {
                break;
            }
        }
        // Whatever is still outstanding was never answered.
        for c in &conns {
            fail_conn(&worker, c, "timeout");
        }
    });
    drop(local);
    worker.st.replace(Measured::new())
}

/// Puts a freshly opened connection in place; returns the first request number it will carry.
fn install(conn: &Conn, stream: std::net::TcpStream, tls: Option<Session>) -> u64 {
    let mut w = conn.lock();
    w.stream = Some(stream);
    w.tls = tls;
    w.buf.clear();
    *conn
        .close_reason
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = None;
    w.next_k
}

/// Fails every request in flight on `conn` with `reason` and closes it.
fn fail_conn(worker: &Worker, conn: &Conn, reason: &str) {
    let sh = &worker.shared;
    let mut w = conn.lock();
    if let Some(s) = w.stream.take() {
        let _ = s.shutdown(Shutdown::Both);
    }
    w.tls = None;
    w.buf.clear();
    let now = sh.now_ns();
    let mut st = worker.st.borrow_mut();
    for slot in conn.slots.iter() {
        let i = slot.intended.swap(0, Ordering::AcqRel);
        if i == 0 {
            continue;
        }
        conn.inflight.fetch_sub(1, Ordering::AcqRel);
        let intended = i - 1;
        if sh.measured(intended) {
            sh.live_errors.fetch_add(1, Ordering::Relaxed);
            st.error(reason, sh.sec(now));
            if reason == "timeout" {
                // An unanswered request took at least this long: keep it in the tail.
                st.hist
                    .saturating_record((now.saturating_sub(intended) / 1000).max(1));
            }
        }
    }
    drop(st);
    drop(w);
    conn.wake.notify();
}

/// One opened connection: the write half for the sender, the read half for the receiver, the
/// TLS session both share (for a TLS target), and the proxy shard that serves it.
struct Opened {
    write: std::net::TcpStream,
    read: tokio::net::TcpStream,
    tls: Option<Session>,
    shard: Option<u16>,
}

/// Opens one connection, with a TLS handshake for a TLS target and HELLO for featureproxy.
async fn connect(shared: &Shared) -> Result<Opened, String> {
    let addr = shared.cfg.target.addr();
    let s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr}: timed out"))?
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_nodelay(true)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let token = match &shared.cfg.proto {
        Proto::Fp { token, .. } => Some(token.as_str()),
        Proto::Resp { .. } => None,
    };
    let (s, tls, shard) = match (&shared.cfg.tls, token) {
        (Some(connector), Some(token)) => {
            let mut t = tokio::time::timeout(Duration::from_secs(2), connector.connect(s, addr))
                .await
                .map_err(|_| format!("{addr}: no TLS handshake within 2s"))?
                .map_err(|e| e.to_string())?;
            let shard = hello(&mut t, token, addr, |e| {
                connector.explain(e, addr).to_string()
            })
            .await?;
            // The handshake and HELLO done, the engine drives the session by hand.
            let (s, session) = t.into_inner();
            (s, Some(Arc::new(Mutex::new(session))), Some(shard))
        }
        (None, Some(token)) => {
            let mut s = s;
            let shard = hello(&mut s, token, addr, |e| e.to_string()).await?;
            (s, None, Some(shard))
        }
        (_, None) => (s, None, None),
    };
    let std = s.into_std().map_err(|e| e.to_string())?;
    let write = std.try_clone().map_err(|e| e.to_string())?;
    let read = tokio::net::TcpStream::from_std(std).map_err(|e| e.to_string())?;
    Ok(Opened {
        write,
        read,
        tls,
        shard,
    })
}

/// Sends HELLO and reads the reply: the proxy shard serving the connection. `io_err` explains an
/// I/O failure (over TLS: a client certificate the proxy refused shows up at this first read).
async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    token: &str,
    addr: &str,
    io_err: impl Fn(std::io::Error) -> String,
) -> Result<u16, String> {
    let mut out = BytesMut::new();
    Request::Hello(Hello {
        version: VERSION,
        token: token.to_string(),
        client_name: "loadgen".into(),
    })
    .encode(&mut out, 0);
    let exchange = async {
        s.write_all(&out).await.map_err(&io_err)?;
        s.flush().await.map_err(&io_err)?;
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            if let Some(f) = decode_frame(&mut buf, 1 << 20).map_err(|(_, e)| e.to_string())? {
                return match Response::decode(&f, &Limits::default()) {
                    Ok(Response::Hello(h)) => Ok(h.shard),
                    Ok(Response::Error(e)) => Err(format!("HELLO refused: {e}")),
                    Ok(_) => Err("unexpected reply to HELLO".to_string()),
                    Err(e) => Err(e.to_string()),
                };
            }
            if s.read_buf(&mut buf).await.map_err(&io_err)? == 0 {
                return Err("connection closed during HELLO".to_string());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| format!("{addr}: no HELLO reply within 2s"))?
        .map_err(|e| format!("{addr}: {e}"))
}

/// Reads one connection for the whole run, reopening it whenever it breaks.
async fn conn_task(
    worker: Rc<Worker>,
    conn: Arc<Conn>,
    mut stream: tokio::net::TcpStream,
    mut tls: Option<Session>,
    mut first_k: u64,
) {
    let sh = worker.shared.clone();
    loop {
        if sh.closed() {
            fill_closed(&worker, &conn);
        }
        let reason = read_loop(&worker, &conn, &mut stream, tls.as_deref(), first_k).await;
        let reason = conn
            .close_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or(reason);
        fail_conn(&worker, &conn, reason);
        // Reopen, every 100 ms, for as long as the run goes on.
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if sh.now_ns() >= sh.end_ns {
                return;
            }
            if let Ok(o) = connect(&sh).await {
                first_k = install(&conn, o.write, o.tls.clone());
                stream = o.read;
                tls = o.tls;
                break;
            }
        }
    }
}

/// Sends requests until the connection has `--inflight` outstanding (closed loop).
fn fill_closed(worker: &Worker, conn: &Conn) {
    let sh = &worker.shared;
    let now = sh.now_ns();
    if now >= sh.end_ns {
        return;
    }
    let mut w = conn.lock();
    if w.stream.is_none() {
        return;
    }
    let mut st = worker.st.borrow_mut();
    while sh.register(conn, &mut w, now, now, &mut st) {}
    drop(st);
    sh.flush(conn, &mut w);
}

/// Reads replies until the connection fails; returns why.
async fn read_loop(
    worker: &Worker,
    conn: &Conn,
    stream: &mut tokio::net::TcpStream,
    tls: Option<&Mutex<ClientConnection>>,
    first_k: u64,
) -> &'static str {
    let sh = &worker.shared;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Over TLS, what the socket gives is read here and decrypted into `buf`.
    let mut raw = BytesMut::new();
    let mut next_k = first_k;
    let mut elems = Vec::new();
    let mut scratch = Vec::new();
    loop {
        let peer_closed = match tls {
            None => {
                if buf.capacity() - buf.len() < 16 * 1024 {
                    buf.reserve(64 * 1024);
                }
                match stream.read_buf(&mut buf).await {
                    Ok(0) => return "conn_closed",
                    Ok(_) => false,
                    Err(_) => return "conn_reset",
                }
            }
            Some(session) => {
                if raw.capacity() - raw.len() < 16 * 1024 {
                    raw.reserve(64 * 1024);
                }
                match stream.read_buf(&mut raw).await {
                    Ok(0) => return "conn_closed",
                    Ok(_) => {}
                    Err(_) => return "conn_reset",
                }
                match tls::decrypt(session, &mut raw, &mut buf) {
                    Ok(closed) => closed,
                    Err(reason) => return reason,
                }
            }
        };
        let now = sh.now_ns();
        match &sh.cfg.proto {
            Proto::Fp { .. } => loop {
                match decode_frame(&mut buf, u32::MAX) {
                    Ok(Some(frame)) => on_fp_frame(worker, conn, frame, now, &mut scratch),
                    Ok(None) => break,
                    Err(_) => return "decode",
                }
            },
            Proto::Resp { .. } => loop {
                match parse_reply(&buf, &mut elems) {
                    Ok(Some(used)) => {
                        on_resp_reply(worker, conn, next_k, &buf[..used], &elems, now);
                        next_k += 1;
                        buf.advance(used);
                    }
                    Ok(None) => break,
                    Err(_) => return "decode",
                }
            },
        }
        if peer_closed {
            return "conn_closed";
        }
        if sh.closed() {
            fill_closed(worker, conn);
        }
    }
}
