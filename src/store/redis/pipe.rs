//! A node's read connection: the shard's MGETs and HMGETs written straight onto a socket of its
//! own, their replies matched to the calls in order (Redis answers a connection's commands in
//! the order sent) and handed up as slices of the read buffer.
//!
//! Why not through fred, which carries every other command: a fred command crosses two tasks
//! and two channels, arms two or three timers and builds a `Value` per key before the caller
//! sees it (`notes/per-request-cost-and-overload.md` §4). Here a read is encoded into the
//! connection's buffer and written by the caller itself, in the same turn the coalescer sealed
//! its batch (one `write` per batch); one task per connection reads the replies and wakes each
//! caller once. The shape is twemproxy's.
//!
//! The connection reconnects on its own (with backoff); while it is down a call fails at once
//! (the caller serves defaults), as fred's `fail_fast` does. A call that outlives its timeout
//! is abandoned, not unsent: its reply is read and dropped when it comes, so the replies of the
//! calls behind it stay matched.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::types::BytesFrame;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::resp;
use crate::store::StoreError;
use crate::transport::Transport;

/// Most calls waiting for replies on one connection; past it a call fails at once instead of
/// queueing behind a server that stopped answering (as fred's command buffer limit does).
const MAX_PENDING: usize = 50_000;
/// Most bytes of commands waiting for a socket that does not take them (a frozen server); past
/// it a call fails at once, so a stuck connection holds a bounded amount of memory.
const MAX_BACKLOG: usize = 16 * 1024 * 1024;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Reconnect delays: from nothing, doubling up to this (fred's policy for the other connection).
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// What the read buffer grows by when full; replies of many rows arrive in few reads.
const READ_CHUNK: usize = 64 * 1024;

/// Where and how to connect.
pub struct Target {
    /// "host:port".
    pub addr: String,
    /// Commands sent first on every connection (AUTH, SELECT), each expected to succeed.
    pub hello: Vec<Vec<Vec<u8>>>,
    /// For `rediss://`: the TLS handshake to make, and the name the certificate must hold.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

/// A node's read connection (see the module doc). Cheap to share within its shard.
#[derive(Clone)]
pub struct Pipe {
    inner: Rc<Inner>,
}

struct Inner {
    target: Target,
    conn: RefCell<Option<Conn>>,
    /// Where READONLY's outcome is kept, once the node serves reads as a replica.
    readonly: RefCell<Option<Rc<Cell<bool>>>>,
    /// Wakes the connection's task: a write that did not fit the socket, or a drop asked for.
    kick: Notify,
    /// Told whenever the connection comes up or goes down.
    changed: Notify,
    drop_asked: Cell<bool>,
    closed: Cell<bool>,
    /// Redis has answered on the current connection (its handshake, or a read): only such a
    /// connection, once ended, is retried at once. One refused or cut before any answer waits
    /// its backoff, so a wrong password or a full server is not hammered with connections.
    answered: Cell<bool>,
    /// The last handshake refusal logged; the same one again is logged at debug only, until a
    /// handshake is accepted.
    refusal: RefCell<Option<String>>,
}

/// One live connection: its socket, what could not be written yet, and the calls waiting for
/// replies, oldest first.
struct Conn {
    socket: Rc<Transport>,
    backlog: BytesMut,
    pending: VecDeque<Rc<Call>>,
}

/// Commands sent together whose replies are collected together.
struct Call {
    purpose: Purpose,
    expect: usize,
    frames: RefCell<Vec<BytesFrame>>,
    outcome: RefCell<Option<Result<Vec<BytesFrame>, StoreError>>>,
    waker: RefCell<Option<Waker>>,
    abandoned: Cell<bool>,
}

/// Who waits for a call's replies.
enum Purpose {
    /// A caller of [`Pipe::call`].
    Read,
    /// The connection's handshake: any error reply drops the connection.
    Hello,
    /// READONLY, for a replica: its outcome is kept where reads look for it.
    ReadOnly(Rc<Cell<bool>>),
}

impl Call {
    fn new(purpose: Purpose, expect: usize) -> Rc<Call> {
        Rc::new(Call {
            purpose,
            expect,
            frames: RefCell::new(Vec::with_capacity(expect)),
            outcome: RefCell::new(None),
            waker: RefCell::new(None),
            abandoned: Cell::new(false),
        })
    }

    fn settle(&self, outcome: Result<Vec<BytesFrame>, StoreError>) {
        *self.outcome.borrow_mut() = Some(outcome);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl Pipe {
    /// Starts connecting in the background, on the current (shard's) runtime.
    pub fn start(target: Target) -> Pipe {
        let pipe = Pipe {
            inner: Rc::new(Inner {
                target,
                conn: RefCell::new(None),
                readonly: RefCell::new(None),
                kick: Notify::new(),
                changed: Notify::new(),
                drop_asked: Cell::new(false),
                closed: Cell::new(false),
                answered: Cell::new(false),
                refusal: RefCell::new(None),
            }),
        };
        tokio::task::spawn_local(pipe.clone().run());
        pipe
    }

    /// Sends the commands `encode` appends (`replies` of them) and waits up to `timeout` for
    /// their replies, in order. Fails at once while the connection is down.
    pub async fn call(
        &self,
        replies: usize,
        encode: impl FnOnce(&mut BytesMut),
        timeout: Duration,
    ) -> Result<Vec<BytesFrame>, StoreError> {
        let call = self.send(Purpose::Read, replies, encode)?;
        let answered = std::future::poll_fn(|cx| {
            if let Some(outcome) = call.outcome.borrow_mut().take() {
                return Poll::Ready(outcome);
            }
            *call.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        });
        match tokio::time::timeout(timeout, answered).await {
            Ok(outcome) => outcome,
            Err(_) => {
                call.abandoned.set(true);
                Err(StoreError::Timeout(timeout))
            }
        }
    }

    fn send(
        &self,
        purpose: Purpose,
        replies: usize,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<Rc<Call>, StoreError> {
        let mut guard = self.inner.conn.borrow_mut();
        let Some(conn) = guard.as_mut() else {
            return Err(StoreError::Unavailable(format!(
                "not connected to Redis at {}",
                self.inner.target.addr
            )));
        };
        if conn.pending.len() >= MAX_PENDING || conn.backlog.len() >= MAX_BACKLOG {
            return Err(StoreError::Unavailable(format!(
                "{} reads ({} bytes unsent) already wait for Redis at {}",
                conn.pending.len(),
                conn.backlog.len(),
                self.inner.target.addr
            )));
        }
        let call = Call::new(purpose, replies);
        conn.pending.push_back(call.clone());
        let was_empty = conn.backlog.is_empty();
        encode(&mut conn.backlog);
        // Behind a backlog the connection's task writes it; else write now, in this turn.
        if was_empty {
            match flush(conn) {
                Ok(true) => {}
                Ok(false) => self.inner.kick.notify_one(),
                Err(e) => {
                    debug!(addr = %self.inner.target.addr, error = %e, "write to Redis failed");
                    self.drop_connection();
                }
            }
        }
        Ok(call)
    }

    /// The server's "host:port".
    pub fn addr(&self) -> &str {
        &self.inner.target.addr
    }

    /// True while the connection is up.
    pub fn is_connected(&self) -> bool {
        self.inner.conn.borrow().is_some()
    }

    /// Waits until the connection is up.
    pub async fn wait_connected(&self) {
        loop {
            let changed = self.inner.changed.notified();
            if self.is_connected() {
                return;
            }
            changed.await;
        }
    }

    /// Drops the connection (every waiting call fails) and reconnects: for a server that stopped
    /// answering but keeps its socket open.
    pub fn drop_connection(&self) {
        self.inner.drop_asked.set(true);
        self.inner.kick.notify_one();
    }

    /// Sends READONLY on this connection and every later one, keeping in `armed` whether the
    /// current one accepted it: a replica then serves reads of its primary's slots.
    pub fn require_readonly(&self, armed: Rc<Cell<bool>>) {
        *self.inner.readonly.borrow_mut() = Some(armed.clone());
        armed.set(false);
        let _ = self.send(Purpose::ReadOnly(armed), 1, |out| {
            resp::encode(out, 1, std::iter::once(&b"READONLY"[..]))
        });
    }

    /// Closes the connection for good.
    pub fn close(&self) {
        self.inner.closed.set(true);
        self.drop_connection();
    }

    /// The connection's task: connect, read replies until the connection ends, reconnect.
    async fn run(self) {
        let addr = self.inner.target.addr.clone();
        let mut backoff = Duration::ZERO;
        while !self.inner.closed.get() {
            match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
                Ok(Ok(socket)) => {
                    let socket = Rc::new(socket);
                    self.up(socket.clone());
                    if let Err(why) = self.serve(&socket).await {
                        debug!(%addr, %why, "Redis read connection ended");
                    }
                    self.down();
                    socket.shutdown();
                    if self.inner.answered.get() {
                        backoff = Duration::ZERO;
                    }
                }
                Ok(Err(e)) => debug!(%addr, error = %e, "cannot connect to Redis"),
                Err(_) => debug!(%addr, "connecting to Redis timed out"),
            }
            if self.inner.closed.get() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).clamp(Duration::from_millis(50), MAX_BACKOFF);
        }
    }

    /// TCP, then TLS's handshake for `rediss://`.
    async fn connect(&self) -> std::io::Result<Transport> {
        let tcp = TcpStream::connect(&self.inner.target.addr).await?;
        let _ = tcp.set_nodelay(true);
        let Some((connector, name)) = &self.inner.target.tls else {
            return Ok(Transport::plain(tcp));
        };
        match connector.connect(name.clone(), tcp).await {
            Ok(stream) => {
                let (tcp, conn) = stream.into_inner();
                Ok(Transport::tls(tcp, conn))
            }
            Err(e) => {
                self.refused(
                    &format!("TLS handshake failed: {e}"),
                    "check [server.redis_tls]: its ca_file must hold the CA of Redis's certificate, which must name this host or server_name, and Redis may ask for a client certificate (cert_file, key_file)",
                );
                Err(e)
            }
        }
    }

    /// Installs a new connection, its handshake (and READONLY) queued ahead of any read.
    fn up(&self, socket: Rc<Transport>) {
        self.inner.drop_asked.set(false);
        self.inner.answered.set(false);
        *self.inner.conn.borrow_mut() = Some(Conn {
            socket,
            backlog: BytesMut::with_capacity(16 * 1024),
            pending: VecDeque::new(),
        });
        let hello = &self.inner.target.hello;
        if !hello.is_empty() {
            let _ = self.send(Purpose::Hello, hello.len(), |out| {
                for command in hello {
                    resp::encode(out, command.len(), command.iter().map(|p| &p[..]));
                }
            });
        }
        let readonly = self.inner.readonly.borrow().clone();
        if let Some(armed) = readonly {
            self.require_readonly(armed);
        }
        self.inner.changed.notify_waiters();
    }

    /// Fails every waiting call and forgets the connection.
    fn down(&self) {
        let Some(conn) = self.inner.conn.borrow_mut().take() else {
            return;
        };
        if let Some(armed) = self.inner.readonly.borrow().as_ref() {
            armed.set(false);
        }
        for call in conn.pending {
            call.settle(Err(StoreError::Unavailable(format!(
                "the connection to Redis at {} was lost",
                self.inner.target.addr
            ))));
        }
        self.inner.changed.notify_waiters();
    }

    /// Reads replies and hands them to the waiting calls; writes what did not fit the socket
    /// when it turns writable. Returns why the connection ended.
    async fn serve(&self, socket: &Transport) -> Result<(), String> {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            if self.inner.drop_asked.get() || self.inner.closed.get() {
                return Err("dropped".into());
            }
            let unsent = {
                let conn = self.inner.conn.borrow();
                let conn = conn.as_ref().ok_or("gone")?;
                !conn.backlog.is_empty() || socket.wants_write()
            };
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                biased;
                r = socket.readable() => {
                    r.map_err(|e| e.to_string())?;
                    match socket.try_read_buf(&mut buf) {
                        Ok(0) => return Err("Redis closed the connection".into()),
                        Ok(_) => self.deliver(&mut buf)?,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e.to_string()),
                    }
                },
                w = socket.writable(), if unsent => {
                    w.map_err(|e| e.to_string())?;
                    let mut conn = self.inner.conn.borrow_mut();
                    flush(conn.as_mut().ok_or("gone")?).map_err(|e| e.to_string())?;
                }
                _ = self.inner.kick.notified() => {}
            }
        }
    }

    /// Hands every complete reply in `buf` to the oldest waiting call.
    fn deliver(&self, buf: &mut BytesMut) -> Result<(), String> {
        loop {
            let frame = match decode_bytes_mut(buf) {
                Ok(Some((frame, _, _))) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("unreadable reply from Redis: {e}")),
            };
            let done = {
                let mut conn = self.inner.conn.borrow_mut();
                let conn = conn.as_mut().ok_or("gone")?;
                let call = conn
                    .pending
                    .front()
                    .ok_or("Redis sent a reply nobody asked for")?;
                let mut frames = call.frames.borrow_mut();
                frames.push(frame);
                if frames.len() < call.expect {
                    continue;
                }
                drop(frames);
                conn.pending.pop_front().ok_or("no call to complete")?
            };
            let frames = done.frames.take();
            match &done.purpose {
                Purpose::Read if done.abandoned.get() => self.inner.answered.set(true),
                Purpose::Read => {
                    self.inner.answered.set(true);
                    done.settle(Ok(frames))
                }
                Purpose::Hello => {
                    if let Some(BytesFrame::Error(e)) =
                        frames.iter().find(|f| matches!(f, BytesFrame::Error(_)))
                    {
                        self.refused(e, "check the URL's user, password and database");
                        return Err("handshake refused".into());
                    }
                    self.inner.answered.set(true);
                    *self.inner.refusal.borrow_mut() = None;
                }
                Purpose::ReadOnly(armed) => {
                    armed.set(matches!(frames.first(), Some(BytesFrame::SimpleString(_))))
                }
            }
        }
    }

    /// Logs Redis's refusal of the handshake: a warning the first time (and whenever the reason
    /// changes), at debug while it repeats on every reconnect.
    fn refused(&self, error: &str, check: &str) {
        let addr = &self.inner.target.addr;
        let mut last = self.inner.refusal.borrow_mut();
        if last.as_deref() == Some(error) {
            debug!(%addr, error, "Redis refused the read connection's handshake again");
            return;
        }
        warn!(
            %addr,
            error,
            "Redis refused the read connection's handshake; {check} (retrying with backoff up to 1s)"
        );
        *last = Some(error.to_string());
    }
}

/// Writes as much of the backlog as the socket takes now: true when all of it went.
fn flush(conn: &mut Conn) -> std::io::Result<bool> {
    conn.socket.flush()?;
    while !conn.backlog.is_empty() {
        match conn.socket.try_write(&conn.backlog) {
            Ok(n) => {
                conn.backlog.advance(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(!conn.socket.wants_write())
}
