//! One multiplexed connection: a writer task, a reader task and the table of waiting callers.
//!
//! Callers encode their frame with a fresh request id, register a oneshot under that id, and hand
//! the bytes to the writer task through a channel. The reader task splits frames off the socket
//! and completes the oneshot registered under each frame's request id. The writer being a task of
//! its own (rather than a locked write half) matters for cancellation: a caller that times out
//! mid-call never leaves half a frame on the socket, because only the writer task writes and it
//! always writes whole frames.
//!
//! The tasks are generic over the stream: a plaintext connection runs them on the TCP socket's
//! own halves, a TLS one on the halves of `tokio::io::split`, which take a lock per poll because
//! a TLS session's reading and writing share one state.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use featureproxy_protocol::{
    decode_frame, Frame, Hello, HelloReply, Limits, Request, Response, DEFAULT_MAX_FRAME,
    HEADER_LEN, VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::batch::unexpected;
use crate::{Error, TlsConnector};

/// Frames queued for the writer before callers wait for room.
const WRITE_QUEUE: usize = 1024;
/// Small frames queued together are coalesced into one write up to this many bytes.
const COALESCE_BYTES: usize = 64 * 1024;
/// Spare room kept in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

type Reply = Result<Frame, Error>;

/// Why a request failed to go out. `NotSent` means the server cannot have seen it, so the caller
/// may safely retry on a fresh connection.
pub(crate) enum CallError {
    NotSent,
    Failed(Error),
}

/// State shared by a connection's handle and its two tasks.
struct Shared {
    addr: Arc<str>,
    pending: Mutex<Pending>,
    /// Mirrors `Pending::closed` for lock-free checks.
    closed: AtomicBool,
    /// Set to true once, on close: tells both tasks to stop.
    shutdown: watch::Sender<bool>,
}

#[derive(Default)]
struct Pending {
    waiters: HashMap<u32, oneshot::Sender<Reply>>,
    closed: bool,
    /// An ERROR frame no caller was waiting for (the server sends one, e.g. with request id 0,
    /// just before closing a connection it cannot trust): quoted in the close reason.
    last_stray_error: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock cannot leave the table inconsistent (every update is a
        // single insert or remove), so a poisoned lock is still usable.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
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
        let (waiters, stray) = {
            let mut p = self.lock();
            if p.closed {
                return;
            }
            p.closed = true;
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
        self.shutdown.send_replace(true);
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

/// A live connection: what HELLO told us, plus the way to the writer task.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Bytes>,
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
                Ok(Conn::start(rd, wr, buf, hello, addr))
            }
            Some(tls) => {
                let mut stream = tls.connect(stream, addr).await?;
                let (hello, buf) = exchange_hello(&mut stream, &out, addr, Some(tls)).await?;
                let (rd, wr) = tokio::io::split(stream);
                Ok(Conn::start(rd, wr, buf, hello, addr))
            }
        }
    }

    /// Starts the reader and writer tasks on a connection that has exchanged HELLO; `buf` holds
    /// whatever was read past the HELLO reply.
    fn start<R, W>(rd: R, wr: W, buf: BytesMut, hello: HelloReply, addr: &Arc<str>) -> Conn
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let limits = Limits {
            max_frame: hello.max_frame,
            max_batch: hello.max_batch,
        };
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            addr: addr.clone(),
            pending: Mutex::new(Pending::default()),
            closed: AtomicBool::new(false),
            shutdown,
        });
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(read_loop(rd, buf, shared.clone(), hello.max_frame));
        tokio::spawn(write_loop(wr, rx, shared.clone()));
        Conn {
            shared,
            tx,
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

    /// False once the connection broke (or its tasks are gone, e.g. their runtime shut down).
    pub(crate) fn is_open(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire) && !self.tx.is_closed()
    }

    /// Sends one request and waits for its reply frame. `encode` appends the request frame with
    /// the given request id.
    pub(crate) async fn call(
        &self,
        encode: impl FnOnce(&mut BytesMut, u32),
    ) -> Result<Frame, CallError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let id = {
            let mut p = self.shared.lock();
            if p.closed {
                return Err(CallError::NotSent);
            }
            // Ids wrap after 2^32 requests; skip any still waiting (a caller cannot wait that
            // long in practice, but a reply must never reach the wrong caller).
            let mut id = self.next_id.fetch_add(1, Ordering::Relaxed);
            while p.waiters.contains_key(&id) {
                id = self.next_id.fetch_add(1, Ordering::Relaxed);
            }
            p.waiters.insert(id, reply_tx);
            id
        };
        let _guard = WaiterGuard {
            shared: &self.shared,
            id,
        };
        let mut out = BytesMut::new();
        encode(&mut out, id);
        if self.tx.send(out.freeze()).await.is_err() {
            return Err(CallError::NotSent);
        }
        match reply_rx.await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(e)) => Err(CallError::Failed(e)),
            // The sender went away without an answer: the tasks were torn down (runtime shutdown).
            Err(_) => Err(CallError::Failed(Error::ConnectionClosed {
                addr: self.shared.addr.to_string(),
                reason: "the connection's tasks stopped".into(),
            })),
        }
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
    let mut stop = shared.shutdown.subscribe();
    let reason = 'outer: loop {
        loop {
            match decode_frame(&mut buf, max_frame) {
                Ok(Some(frame)) => shared.deliver(frame),
                Ok(None) => break,
                Err((_, e)) => break 'outer format!("undecodable frame from the server: {e}"),
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
                Ok(0) => break "the server closed the connection".to_string(),
                Ok(_) => {}
                Err(e) => break format!("read failed: {e}"),
            },
        }
    };
    shared.close(&reason);
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    let mut stop = shared.shutdown.subscribe();
    let mut batch = BytesMut::new();
    loop {
        let first = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            m = rx.recv() => match m {
                Some(frame) => frame,
                None => break,
            },
        };
        // Coalesce frames already queued into one write; a lone frame is written as it is.
        let result = match rx.try_recv() {
            Err(_) => {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    r = write_frames(&mut wr, &first) => r,
                }
            }
            Ok(second) => {
                batch.clear();
                batch.extend_from_slice(&first);
                batch.extend_from_slice(&second);
                while batch.len() < COALESCE_BYTES {
                    match rx.try_recv() {
                        Ok(f) => batch.extend_from_slice(&f),
                        Err(_) => break,
                    }
                }
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    r = write_frames(&mut wr, &batch) => r,
                }
            }
        };
        if let Err(e) = result {
            shared.close(&format!("write failed: {e}"));
            break;
        }
    }
    // Frames still queued were never written: their callers hear ConnectionClosed from close().
    drop(rx);
    let _ = wr.shutdown().await;
}

/// Writes `bytes` out. The flush costs nothing on a TCP half; a TLS stream may keep encrypted
/// bytes buffered when the socket is full, and they must go out before the writer waits for
/// more frames.
async fn write_frames<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8]) -> io::Result<()> {
    wr.write_all(bytes).await?;
    wr.flush().await
}
