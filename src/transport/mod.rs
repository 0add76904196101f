//! The byte stream under a client connection and under a Redis read connection: plain TCP, or
//! TLS over TCP. Both stages read and write it the same way, so TLS is one more kind of
//! transport rather than a second copy of each connection's loop.
//!
//! Why rustls is driven by hand here rather than through tokio-rustls's stream: both connections
//! write in the caller's turn (`try_write`, no writer task) while a select waits on the same
//! socket for replies, and a `TlsStream` has neither `try_write` nor halves (`tokio::io::split`
//! adds a lock). tokio-rustls runs the handshake; then [`Transport`] keeps the socket and the
//! rustls state: a write encrypts into rustls's buffer and sends the records at once; a read takes
//! what the socket holds in one syscall (through a shard-wide scratch buffer), decrypts it, and
//! appends the plaintext to the caller's buffer, which the frame decoders read as before. Notes:
//! `tls-and-access.md` §1.4 measured one `recvfrom` per 7 KB reply this way, two through
//! tokio-rustls.

pub mod pem;

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;

/// The one crypto provider of every TLS configuration the proxy builds (fred's too). Named
/// explicitly everywhere instead of installed process-wide, so no configuration depends on what
/// ran first.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The ALPN name of wire protocol v1 over TLS.
pub const ALPN: &[u8] = b"featureproxy/1";

/// How much a TLS read takes from the socket at once: a reply of many rows in one syscall.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    /// Ciphertext on its way from a socket into rustls. One per thread (a shard's connections
    /// take turns on it: a read never awaits between filling and emptying it), not one per
    /// connection.
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// A connected socket, plain or TLS after its handshake. Every method takes `&self`: the caller
/// that writes and the task that reads share it within one thread.
pub struct Transport {
    tcp: TcpStream,
    tls: Option<RefCell<rustls::Connection>>,
    /// Plaintext the handshake left decrypted in rustls (a request sent with the client's last
    /// handshake flight): readable without the socket turning readable.
    buffered: Cell<bool>,
}

impl Transport {
    /// A plaintext connection.
    pub fn plain(tcp: TcpStream) -> Transport {
        Transport {
            tcp,
            tls: None,
            buffered: Cell::new(false),
        }
    }

    /// A TLS connection whose handshake is done (tokio-rustls's `into_inner`).
    pub fn tls(tcp: TcpStream, conn: impl Into<rustls::Connection>) -> Transport {
        Transport {
            tcp,
            tls: Some(RefCell::new(conn.into())),
            buffered: Cell::new(true),
        }
    }

    /// The socket, for what only TCP knows (queued bytes, addresses).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// True for a TLS connection.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Waits until a read may find something.
    pub async fn readable(&self) -> io::Result<()> {
        if self.buffered.get() {
            return Ok(());
        }
        self.tcp.readable().await
    }

    /// Waits until the socket takes more bytes.
    pub async fn writable(&self) -> io::Result<()> {
        self.tcp.writable().await
    }

    /// Appends what has arrived to `out` without waiting. `Ok(0)` is the end of the stream;
    /// `WouldBlock` means nothing for the caller yet (for TLS also when only handshake messages
    /// or a session ticket came).
    pub fn try_read_buf(&self, out: &mut BytesMut) -> io::Result<usize> {
        let Some(tls) = &self.tls else {
            return self.tcp.try_read_buf(out);
        };
        let mut tls = tls.borrow_mut();
        if self.buffered.replace(false) {
            let (n, _) = drain_plaintext(&mut tls, out)?;
            if n > 0 {
                return Ok(n);
            }
        }
        let read = SCRATCH_BUF.with_borrow_mut(|scratch| {
            let n = self.tcp.try_read(scratch)?;
            let mut ciphertext = &scratch[..n];
            let (mut plaintext, mut closed) = (0, false);
            while !ciphertext.is_empty() {
                tls.read_tls(&mut ciphertext)?;
                let (p, c) = drain_plaintext(&mut tls, out)?;
                plaintext += p;
                closed |= c;
            }
            Ok::<_, io::Error>((n, plaintext, closed))
        });
        // Whatever rustls wants to say (a key update's answer, an alert) goes out now.
        let flushed = flush_tls(&mut tls, &self.tcp);
        let (n, plaintext, closed) = read?;
        flushed?;
        match (n, plaintext) {
            (0, _) => Ok(0),
            (_, 0) if closed => Ok(0),
            (_, 0) => Err(io::ErrorKind::WouldBlock.into()),
            (_, p) => Ok(p),
        }
    }

    /// Writes as much of `data` as the socket takes now, without waiting; returns how much of
    /// `data` it took. For TLS, records rustls holds that the socket did not take yet are sent
    /// by [`Transport::flush`] once [`Transport::writable`] (see [`Transport::wants_write`]).
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else {
            return self.tcp.try_write(data);
        };
        let mut tls = tls.borrow_mut();
        flush_tls(&mut tls, &self.tcp)?;
        let taken = tls.writer().write(data)?;
        flush_tls(&mut tls, &self.tcp)?;
        if taken == 0 && !data.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// True while TLS records wait for the socket.
    pub fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.borrow().wants_write())
    }

    /// Sends TLS records that wait for the socket, as far as it takes them now.
    pub fn flush(&self) -> io::Result<()> {
        match &self.tls {
            Some(tls) => flush_tls(&mut tls.borrow_mut(), &self.tcp),
            None => Ok(()),
        }
    }

    /// Ends the stream: TLS's close_notify, then TCP's FIN. Best effort, without waiting.
    pub fn shutdown(&self) {
        if let Some(tls) = &self.tls {
            let mut tls = tls.borrow_mut();
            tls.send_close_notify();
            let _ = flush_tls(&mut tls, &self.tcp);
        }
        let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
    }
}

/// Moves every decrypted byte rustls holds into `out`: how many, and whether the peer has
/// closed its side (close_notify).
fn drain_plaintext(tls: &mut rustls::Connection, out: &mut BytesMut) -> io::Result<(usize, bool)> {
    let state = tls
        .process_new_packets()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let n = state.plaintext_bytes_to_read();
    if n > 0 {
        let at = out.len();
        out.resize(at + n, 0);
        tls.reader().read_exact(&mut out[at..])?;
    }
    Ok((n, state.peer_has_closed()))
}

/// Writes rustls's pending records to the socket until it would block.
fn flush_tls(tls: &mut rustls::Connection, tcp: &TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(&mut TryWrite(tcp)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The socket as a `Write` that never waits (rustls writes its records through it).
struct TryWrite<'a>(&'a TcpStream);

impl Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
