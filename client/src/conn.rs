//! One multiplexed connection: a writer task, a reader task and the table of waiting callers.
//!
//! Callers encode their frame with a fresh request id and register a oneshot under that id. The
//! reader task splits frames off the socket and completes the oneshot registered under each
//! frame's request id.
//!
//! Sending: a caller alone on a plaintext connection (no other call in flight on it) writes its
//! frame to the socket itself, without waiting (`try_write`): a lone caller's call then costs no
//! hop to the writer task (a task switch, a large share of its CPU). Whatever the socket does not
//! take at once, frames of concurrent callers (which the writer task gathers into fewer writes),
//! and every frame on TLS (whose session cannot be written from outside its task) go to the
//! writer task's queue, which it writes in order ([`Writer`] says who writes). Frames never interleave, and a caller
//! that is cancelled (its timeout) never leaves half a frame on the socket: a direct write
//! happens within one poll and hands any unwritten rest, ahead of what others queued meanwhile,
//! to the writer task before the caller can be dropped; the writer task writes whole frames.
//!
//! The tasks are generic over the stream: a plaintext connection runs them on the TCP socket's
//! own halves (the write half shared with the callers, see [`Sink`]), a TLS one on the halves of
//! `tokio::io::split`, which take a lock per poll because a TLS session's reading and writing
//! share one state.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Buf, Bytes, BytesMut};
use featureproxy_protocol::{
    decode_frame, Frame, Hello, HelloReply, Limits, Request, Response, DEFAULT_MAX_FRAME,
    HEADER_LEN, VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch, Notify};

use crate::batch::unexpected;
use crate::{Error, TlsConnector};

/// Frames queued for the writer task before callers wait for room.
const WRITE_QUEUE: usize = 1024;
/// Small frames queued together are coalesced into one write up to this many bytes.
const COALESCE_BYTES: usize = 64 * 1024;
/// Spare room kept in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

type Reply = Result<Frame, Error>;

/// Why a request got no reply frame; tells the caller whether it may send it again.
pub(crate) enum CallError {
    /// The request never left: the connection was closed before its frame was handed on, or the
    /// caller's own write of it failed before any byte went out. The server cannot have seen it,
    /// so any request may be sent again on a fresh connection.
    NotSent,
    /// The server closed the connection under the request (the reader task met EOF, a TLS
    /// close_notify included, or a read error such as a reset) and no byte of any reply had
    /// arrived on the connection since the request was registered, just before its frame was
    /// written: so no reply to it had begun, not even a partial frame. The connection had carried
    /// a complete reply before (every connection has, its HELLO reply). With several requests in
    /// flight, only those written after the last bytes the reader received qualify: bytes that
    /// arrived later may have been the start of their reply. This is the race of a request sent
    /// just as the server closed an idle connection. The server may still have received the
    /// request, and acted on it: only an idempotent request (GET, PING, SCHEMA) may be sent again.
    /// A connection closed any other way (a write failure, an undecodable reply, the client's own
    /// close) fails its requests with `Failed`.
    Unanswered(Error),
    /// Anything else: the request may have been answered, or served, in part.
    Failed(Error),
}

/// State shared by a connection's handle and its two tasks.
struct Shared {
    addr: Arc<str>,
    pending: Mutex<Pending>,
    /// Bytes read off the connection since HELLO's reply (any left over from HELLO's read
    /// included). Only the reader task stores it, after each read; a caller notes it when it
    /// registers its request, to tell whether a reply had begun when the connection closed
    /// ([`CallError::Unanswered`]).
    received: AtomicU64,
    /// Mirrors `Pending::closed` for lock-free checks.
    closed: AtomicBool,
    /// Set to true once, on close: tells both tasks to stop.
    shutdown: watch::Sender<bool>,
    outgoing: Mutex<Outgoing>,
    /// Wakes the writer task when a caller queued frames for it.
    wake_writer: Notify,
    /// Wakes callers waiting for room in a full queue (and all of them on close).
    room: Notify,
}

/// The way out: frames for the writer task, and who may write to the socket.
struct Outgoing {
    frames: VecDeque<Bytes>,
    /// Who writes now. Frames are queued behind whoever does, so they go out whole and in order.
    writer: Writer,
    /// The plaintext socket's write half, for callers to write to while the writer task is idle;
    /// `None` over TLS, and once the connection closed (so the socket closes with the tasks).
    direct: Option<Arc<OwnedWriteHalf>>,
}

/// Who may write to a connection's socket ([`Outgoing::writer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// Nobody: a caller may write its own frame (plaintext only).
    Idle,
    /// A caller is writing its own frame, without holding the lock (so that other callers, on
    /// other threads, are not held up by its system call: they queue their frames behind it).
    /// It then hands whatever is queued, and any rest of its own frame, to the writer task.
    Caller,
    /// The writer task, until the queue is empty.
    Task,
}

#[derive(Default)]
struct Pending {
    waiters: HashMap<u32, oneshot::Sender<Reply>>,
    closed: bool,
    /// An ERROR frame no caller was waiting for (the server sends one, e.g. with request id 0,
    /// just before closing a connection it cannot trust): quoted in the close reason.
    last_stray_error: Option<String>,
    /// Set when the server closed the connection (EOF or a read error met by the reader task):
    /// [`Shared::received`] then. `None` while open, and after a close for any other reason.
    peer_closed_at: Option<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock cannot leave the table inconsistent (every update is a
        // single insert or remove), so a poisoned lock is still usable.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn outgoing(&self) -> MutexGuard<'_, Outgoing> {
        // As `lock`: every update is a push, a pop or a flag, none of which can panic halfway.
        self.outgoing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a frame to the caller waiting for its request id. Replies nobody waits for (the
    /// caller timed out or gave up) are dropped.
    fn deliver(&self, frame: Frame) {
        let mut p = self.lock();
        match p.waiters.remove(&frame.request_id) {
            Some(tx) => {
                drop(p);
                let _ = tx.send(Ok(frame));
            }
            None => {
                if frame.op == 0xFF {
                    if let Ok(Response::Error(e)) = Response::decode(&frame, &Limits::default()) {
                        p.last_stray_error = Some(e.to_string());
                    }
                }
            }
        }
    }

    /// Marks the connection closed and fails every waiting caller with `ConnectionClosed`.
    /// Idempotent: the first reason wins.
    fn close(&self, reason: &str) {
        self.close_as(reason, None);
    }

    /// [`Shared::close`]; `peer_closed_at` is `Some(bytes received in all)` when the server
    /// closed the connection (the reader task met EOF or a read error), for
    /// [`CallError::Unanswered`].
    fn close_as(&self, reason: &str, peer_closed_at: Option<u64>) {
        let (waiters, stray) = {
            let mut p = self.lock();
            if p.closed {
                return;
            }
            p.closed = true;
            p.peer_closed_at = peer_closed_at;
            self.closed.store(true, Ordering::Release);
            (std::mem::take(&mut p.waiters), p.last_stray_error.take())
        };
        let reason = match stray {
            Some(e) => format!("{reason} (after the server reported {e})"),
            None => reason.to_string(),
        };
        for (_, tx) in waiters {
            let _ = tx.send(Err(Error::ConnectionClosed {
                addr: self.addr.to_string(),
                reason: reason.clone(),
            }));
        }
        {
            // Frames still queued will never be written: their callers heard ConnectionClosed
            // above. Letting go of the socket here closes it as soon as the tasks stop.
            let mut out = self.outgoing();
            out.frames.clear();
            out.direct = None;
        }
        self.room.notify_waiters();
        self.shutdown.send_replace(true);
    }
}

/// Closes the connection when a task of it ends in any way, including being dropped with its
/// runtime: callers waiting for replies then hear why rather than wait for nothing, and the
/// connection reports itself closed ([`Conn::is_open`]) so the next call opens another.
struct TaskGuard(Arc<Shared>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.close("the connection's tasks stopped");
    }
}

/// Where the writer task writes: a plaintext socket's write half, which callers also write to
/// directly when the writer is idle ([`Outgoing::direct`]), or a stream of its own (a TLS
/// session's write half).
///
/// The plaintext reader keeps tokio's own read half, whose reads skip the extra `recv` that
/// would only find the socket drained (a short read tells it so).
enum Sink<W> {
    Tcp(Arc<OwnedWriteHalf>),
    Stream(W),
}

/// The `W` of a plaintext connection's [`Sink`], which has no stream of its own.
type NoStream = tokio::io::Sink;

impl<W: AsyncWrite + Unpin> Sink<W> {
    /// Writes all of `bytes`. A stream is flushed too: a TLS session may keep encrypted bytes
    /// buffered when the socket is full, and they must go out before the writer waits for more
    /// frames (on a TCP half there is nothing to flush).
    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Tcp(half) => {
                let mut rest = bytes;
                while !rest.is_empty() {
                    half.writable().await?;
                    match half.try_write(rest) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => rest = &rest[n..],
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Sink::Stream(w) => {
                w.write_all(bytes).await?;
                w.flush().await
            }
        }
    }

    /// Ends the stream (a TLS session sends its close_notify). A TCP write half shuts down when
    /// its last handle is dropped.
    async fn shutdown(&mut self) {
        if let Sink::Stream(w) = self {
            let _ = w.shutdown().await;
        }
    }
}

/// Removes a caller's entry from the waiter table when the call ends in any way, including being
/// dropped by a timeout: no entry outlives its caller.
struct WaiterGuard<'a> {
    shared: &'a Shared,
    id: u32,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().waiters.remove(&self.id);
    }
}

/// A live connection: what HELLO told us, plus the way to its socket and tasks.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    next_id: AtomicU32,
    hello: HelloReply,
    limits: Limits,
}

impl Conn {
    /// Connects (with a TLS handshake when `tls` is given), sends HELLO and waits for the reply,
    /// then starts the reader and writer tasks. The caller applies the timeout.
    pub(crate) async fn open(
        addr: &Arc<str>,
        token: &str,
        client_name: &str,
        tls: Option<&TlsConnector>,
    ) -> Result<Conn, Error> {
        let connect_err = |source| Error::Connect {
            addr: addr.to_string(),
            source,
        };
        let stream = TcpStream::connect(&**addr).await.map_err(connect_err)?;
        stream.set_nodelay(true).map_err(connect_err)?;

        let mut out = BytesMut::new();
        Request::Hello(Hello {
            version: VERSION,
            token: token.to_string(),
            client_name: client_name.to_string(),
        })
        .encode(&mut out, 0);

        // Monomorphized per stream kind, so the plaintext connection's tasks work on the TCP
        // halves directly, with no indirection a TLS stream would need.
        match tls {
            None => {
                let mut stream = stream;
                let (hello, buf) = exchange_hello(&mut stream, &out, addr, None).await?;
                let (rd, wr) = stream.into_split();
                let out = Sink::<NoStream>::Tcp(Arc::new(wr));
                Ok(Conn::start(rd, out, buf, hello, addr))
            }
            Some(tls) => {
                let mut stream = tls.connect(stream, addr).await?;
                let (hello, buf) = exchange_hello(&mut stream, &out, addr, Some(tls)).await?;
                let (rd, wr) = tokio::io::split(stream);
                Ok(Conn::start(rd, Sink::Stream(wr), buf, hello, addr))
            }
        }
    }

    /// Starts the reader and writer tasks on a connection that has exchanged HELLO; `buf` holds
    /// whatever was read past the HELLO reply.
    fn start<R, W>(rd: R, out: Sink<W>, buf: BytesMut, hello: HelloReply, addr: &Arc<str>) -> Conn
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let limits = Limits {
            max_frame: hello.max_frame,
            max_batch: hello.max_batch,
        };
        let (shutdown, _) = watch::channel(false);
        let direct = match &out {
            Sink::Tcp(half) => Some(half.clone()),
            Sink::Stream(_) => None,
        };
        let shared = Arc::new(Shared {
            addr: addr.clone(),
            pending: Mutex::new(Pending::default()),
            received: AtomicU64::new(buf.len() as u64),
            closed: AtomicBool::new(false),
            shutdown,
            outgoing: Mutex::new(Outgoing {
                frames: VecDeque::new(),
                writer: Writer::Idle,
                direct,
            }),
            wake_writer: Notify::new(),
            room: Notify::new(),
        });
        tokio::spawn(read_loop(rd, buf, shared.clone(), hello.max_frame));
        tokio::spawn(write_loop(out, shared.clone()));
        Conn {
            shared,
            next_id: AtomicU32::new(1),
            hello,
            limits,
        }
    }

    /// The server's HELLO reply on this connection.
    pub(crate) fn hello(&self) -> &HelloReply {
        &self.hello
    }

    /// The server's limits, from HELLO.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// False once the connection broke (or its tasks are gone, e.g. their runtime shut down:
    /// see [`TaskGuard`]).
    pub(crate) fn is_open(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire)
    }

    /// Sends one request and waits for its reply frame. `encode` appends the request frame with
    /// the given request id.
    pub(crate) async fn call(
        &self,
        encode: impl FnOnce(&mut BytesMut, u32),
    ) -> Result<Frame, CallError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let (id, alone, received) = {
            let mut p = self.shared.lock();
            if p.closed {
                return Err(CallError::NotSent);
            }
            // Noted before the frame is written: a reply to it can only arrive after this.
            let received = self.shared.received.load(Ordering::Relaxed);
            // Ids wrap after 2^32 requests; skip any still waiting (a caller cannot wait that
            // long in practice, but a reply must never reach the wrong caller).
            let mut id = self.next_id.fetch_add(1, Ordering::Relaxed);
            while p.waiters.contains_key(&id) {
                id = self.next_id.fetch_add(1, Ordering::Relaxed);
            }
            p.waiters.insert(id, reply_tx);
            (id, p.waiters.len() == 1, received)
        };
        let _guard = WaiterGuard {
            shared: &self.shared,
            id,
        };
        let mut out = BytesMut::new();
        encode(&mut out, id);
        self.send(out.freeze(), alone).await?;
        match reply_rx.await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(e)) => {
                // The closer set `peer_closed_at` before failing this caller.
                if self.shared.lock().peer_closed_at == Some(received) {
                    Err(CallError::Unanswered(e))
                } else {
                    Err(CallError::Failed(e))
                }
            }
            // The sender went away without an answer: the tasks were torn down (runtime shutdown).
            Err(_) => Err(CallError::Failed(Error::ConnectionClosed {
                addr: self.shared.addr.to_string(),
                reason: "the connection's tasks stopped".into(),
            })),
        }
    }

    /// Puts `frame` on its way: written to the socket at once by a caller `alone` on a plaintext
    /// connection (no other call in flight on it) when nobody else writes, else (and for
    /// whatever the socket did not take) queued for the writer task. Waits only while the queue
    /// is full. `NotSent` when the connection is closed or a direct write failed before any byte
    /// of the frame went out.
    ///
    /// Only a lone caller writes itself: it saves the hop to the writer task, and there is
    /// nothing to gather. Concurrent callers' frames go through the writer task, which writes
    /// all those queued meanwhile in one system call: with 64 one-row PUTs in flight (`loadgen
    /// seed --batch 1 --inflight 64`, 100,000 rows), each caller writing its own frame took 10%
    /// longer (1.72 against 1.56 s, medians of 5 alternating runs) and more system CPU.
    ///
    /// The direct write happens within one poll (no await between taking the writer's role and
    /// handing it on), so a caller cancelled by its timeout cannot leave half a frame behind.
    async fn send(&self, mut frame: Bytes, alone: bool) -> Result<(), CallError> {
        let shared = &*self.shared;
        let sock = loop {
            let mut room = pin!(shared.room.notified());
            {
                let mut out = shared.outgoing();
                if shared.closed.load(Ordering::Acquire) {
                    return Err(CallError::NotSent);
                }
                if out.writer == Writer::Idle {
                    if let Some(sock) = out.direct.clone().filter(|_| alone) {
                        out.writer = Writer::Caller;
                        break sock;
                    }
                    // Over TLS, and with other calls in flight, the writer task writes.
                    out.frames.push_back(frame);
                    out.writer = Writer::Task;
                    drop(out);
                    shared.wake_writer.notify_one();
                    return Ok(());
                }
                if out.frames.len() < WRITE_QUEUE {
                    // Whoever writes now writes it after what it has.
                    out.frames.push_back(frame);
                    return Ok(());
                }
                // Registered before the lock is let go, so the writer's wake-up is not missed.
                room.as_mut().enable();
            }
            room.await;
        };
        // This caller alone writes to the socket until it hands the role on below.
        let written = sock.try_write(&frame);
        let mut out = shared.outgoing();
        match written {
            Ok(n) if n == frame.len() => {}
            Ok(n) => {
                // The rest goes before anything queued meanwhile: its start is on the wire.
                frame.advance(n);
                out.frames.push_front(frame);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => out.frames.push_front(frame),
            Err(e) => {
                out.writer = Writer::Idle;
                drop(out);
                shared.close(&format!("write failed: {e}"));
                return Err(CallError::NotSent);
            }
        }
        if out.frames.is_empty() {
            out.writer = Writer::Idle;
        } else {
            out.writer = Writer::Task;
            drop(out);
            shared.wake_writer.notify_one();
        }
        Ok(())
    }

    /// Number of callers waiting for a reply (for tests).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.shared.lock().waiters.len()
    }

    /// Closes the connection: callers waiting on it get `ConnectionClosed` with `reason`, and the
    /// next call on its pool slot opens a new one.
    pub(crate) fn close(&self, reason: &str) {
        self.shared.close(reason);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Nobody can send on this connection any more: stop its tasks, which closes the socket.
        self.shared.close("the client dropped the connection");
    }
}

/// Sends the encoded HELLO `out` and reads the server's reply; returns it with the bytes read
/// past it.
///
/// Over TLS, failures are explained by `tls`: TLS 1.3 finishes the client's side of the handshake
/// before the server has checked the client's certificate, so a refused certificate arrives as an
/// alert at this first read, and is reported here, at connect, rather than by a later call.
async fn exchange_hello<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    out: &[u8],
    addr: &Arc<str>,
    tls: Option<&TlsConnector>,
) -> Result<(HelloReply, BytesMut), Error> {
    let io_err = |e: io::Error| match tls {
        Some(tls) => tls.explain(e, addr),
        None => Error::Connect {
            addr: addr.to_string(),
            source: e,
        },
    };
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    if let Err(e) = async {
        stream.write_all(out).await?;
        stream.flush().await
    }
    .await
    {
        // A server that refused the client's certificate may have closed the connection before
        // HELLO went out; its alert, if it sent one, says more than the failed write.
        if tls.is_some() {
            if let Err(Error::Tls(m)) = stream.read_buf(&mut buf).await.map_err(io_err) {
                return Err(Error::Tls(m));
            }
        }
        return Err(io_err(e));
    }
    let frame = loop {
        match decode_frame(&mut buf, DEFAULT_MAX_FRAME) {
            Ok(Some(frame)) => break frame,
            Ok(None) => {}
            Err((_, e)) => return Err(Error::Protocol(e)),
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) => {
                return Err(Error::ConnectionClosed {
                    addr: addr.to_string(),
                    reason: "the server closed the connection before answering HELLO".into(),
                })
            }
            Ok(_) => {}
            Err(e) => return Err(io_err(e)),
        }
    };
    let hello = match Response::decode(&frame, &Limits::default())? {
        Response::Hello(h) => h,
        Response::Error(e) => return Err(Error::from_server(e)),
        other => return Err(unexpected("HELLO", &other)),
    };
    if hello.version != VERSION {
        return Err(Error::Protocol(
            featureproxy_protocol::ProtocolError::malformed(format!(
                "the server answered HELLO with protocol version {}, this client speaks {VERSION}",
                hello.version
            )),
        ));
    }
    Ok((hello, buf))
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    mut buf: BytesMut,
    shared: Arc<Shared>,
    max_frame: u32,
) {
    let _guard = TaskGuard(shared.clone());
    let mut stop = shared.shutdown.subscribe();
    // Mirrored in `shared.received` (this task alone stores it).
    let mut received = shared.received.load(Ordering::Relaxed);
    let (reason, by_peer) = 'outer: loop {
        loop {
            match decode_frame(&mut buf, max_frame) {
                Ok(Some(frame)) => shared.deliver(frame),
                Ok(None) => break,
                Err((_, e)) => {
                    break 'outer (format!("undecodable frame from the server: {e}"), false)
                }
            }
        }
        // Room for the rest of a frame whose header is in (its length was checked against
        // max_frame by decode_frame), so a large reply is read into one buffer without
        // repeated regrowth; otherwise room for a chunk.
        let want = match buf.get(..4) {
            Some(&[a, b, c, d]) if buf.len() >= HEADER_LEN => {
                (4 + u32::from_le_bytes([a, b, c, d]) as usize).saturating_sub(buf.len())
            }
            _ => 0,
        }
        .max(READ_CHUNK / 4);
        if buf.capacity() - buf.len() < want {
            buf.reserve(want.max(READ_CHUNK));
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => break ("the server closed the connection".to_string(), true),
                Ok(n) => {
                    received += n as u64;
                    shared.received.store(received, Ordering::Relaxed);
                }
                Err(e) => break (format!("read failed: {e}"), true),
            },
        }
    };
    shared.close_as(&reason, by_peer.then_some(received));
}

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: Sink<W>, shared: Arc<Shared>) {
    let _guard = TaskGuard(shared.clone());
    let mut stop = shared.shutdown.subscribe();
    let mut batch = BytesMut::new();
    loop {
        // Take what is queued, coalescing frames into one write; a lone frame is written as it
        // is. With nothing queued, the writer is idle (callers may write directly) until woken.
        let taken = {
            let mut out = shared.outgoing();
            let full = out.frames.len() >= WRITE_QUEUE;
            if out.writer != Writer::Task {
                // Not the writer's turn (a caller writes, or nothing was handed over): wait.
                None
            } else if let Some(first) = out.frames.pop_front() {
                let coalesced = !out.frames.is_empty();
                if coalesced {
                    batch.clear();
                    batch.extend_from_slice(&first);
                    while batch.len() < COALESCE_BYTES {
                        match out.frames.pop_front() {
                            Some(f) => batch.extend_from_slice(&f),
                            None => break,
                        }
                    }
                }
                Some((first, coalesced, full))
            } else {
                out.writer = Writer::Idle;
                None
            }
        };
        let Some((first, coalesced, full)) = taken else {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = shared.wake_writer.notified() => continue,
            }
        };
        if full {
            shared.room.notify_waiters();
        }
        let bytes: &[u8] = if coalesced { &batch } else { &first };
        let result = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = wr.write_all(bytes) => r,
        };
        if let Err(e) = result {
            shared.close(&format!("write failed: {e}"));
            break;
        }
    }
    wr.shutdown().await;
}
