//! TLS on the engine's connections. A connection's TLS session is one state machine that both
//! of its threads need: the sender (or, in closed loop, the receiver) encrypts requests into it
//! and the receiver decrypts replies out of it. It sits behind a mutex of its own, apart from the
//! writer's, and neither side holds it while waiting for the socket, so a sender stuck behind a
//! full socket never stops the receiver from draining the replies that would unblock it.
//! Plaintext connections have no session and never touch any of this.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use featureproxy_client::rustls::ClientConnection;

/// A connection's TLS session, shared by its writer and its reader.
pub(super) type Session = Arc<Mutex<ClientConnection>>;

fn lock(s: &Mutex<ClientConnection>) -> MutexGuard<'_, ClientConnection> {
    // A panic mid-call leaves the session as rustls left it; the connection fails at its next
    // use if that is broken.
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Encrypts `plain` and writes it to the non-blocking `stream`, waiting (without the session's
/// lock) while the socket is full, up to `timeout`. Err: the failure's error kind.
pub(super) fn write(
    session: &Mutex<ClientConnection>,
    stream: &mut TcpStream,
    mut plain: &[u8],
    timeout: Duration,
) -> Result<(), &'static str> {
    let mut blocked_since: Option<Instant> = None;
    loop {
        let mut s = lock(session);
        while !plain.is_empty() {
            // rustls takes what fits in its buffer of outgoing records; the rest waits for
            // write_tls to make room.
            match s.writer().write(plain) {
                Ok(0) => break,
                Ok(n) => plain = &plain[n..],
                Err(_) => return Err("write_error"),
            }
        }
        if !plain.is_empty() && !s.wants_write() {
            return Err("write_error");
        }
        let mut blocked = false;
        while s.wants_write() {
            match s.write_tls(stream) {
                Ok(0) => return Err("write_error"),
                Ok(_) => blocked_since = None,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(_) => return Err("write_error"),
            }
        }
        drop(s);
        if !blocked {
            if plain.is_empty() {
                return Ok(());
            }
            continue;
        }
        let since = *blocked_since.get_or_insert_with(Instant::now);
        if since.elapsed() > timeout {
            return Err("timeout");
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Feeds the bytes read off the socket (`raw`, emptied) to the session and appends what they
/// decrypt to `plain`. Ok(true) when the server closed the session (close_notify): the caller
/// still handles the replies before it. Err: the failure's error kind.
pub(super) fn decrypt(
    session: &Mutex<ClientConnection>,
    raw: &mut BytesMut,
    plain: &mut BytesMut,
) -> Result<bool, &'static str> {
    let mut s = lock(session);
    let mut rd: &[u8] = raw;
    let mut closed = false;
    while !rd.is_empty() {
        s.read_tls(&mut rd).map_err(|_| "tls")?;
        let state = s.process_new_packets().map_err(|_| "tls")?;
        let n = state.plaintext_bytes_to_read();
        if n > 0 {
            let at = plain.len();
            plain.resize(at + n, 0);
            s.reader().read_exact(&mut plain[at..]).map_err(|_| "tls")?;
        }
        closed |= state.peer_has_closed();
    }
    raw.clear();
    Ok(closed)
}
