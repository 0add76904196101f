//! Taking connections: the shard's own listener on the shared port (SO_REUSEPORT, so the kernel
//! spreads new connections across shards), the per-shard connection limit, and the drain at
//! shutdown.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use featureproxy_protocol::{ErrorCode, ProtocolError, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tracing::{debug, warn};

use super::{connection, tls, Serving};
use crate::telemetry::counters::{Handshake, ShardStats};
use crate::transport::Transport;

/// Makes sure no other process listens on `addr` and settles its port (port 0 picks one): binds
/// a socket without SO_REUSEPORT there and lets it go. The shards' listeners share their port
/// with SO_REUSEPORT, which any process of the same user could join too: a second proxy started
/// on the same address would silently take part of the connections (and reset the ones waiting
/// in its queue when it stops). Binding without the option fails while anything listens there,
/// so this refuses to start instead. Returns the address to listen on.
pub fn claim_port(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let s = tcp_socket(addr)?;
    s.bind(&addr.into())?;
    let bound = s.local_addr()?;
    bound
        .as_socket()
        .ok_or_else(|| std::io::Error::other("bound to a non-IP address"))
}

/// A TCP socket for `addr` with SO_REUSEADDR: only a socket in LISTEN state on the address
/// conflicts with it, not the connections of an earlier run still in TIME_WAIT.
fn tcp_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    Ok(s)
}

/// Opens a listening socket with SO_REUSEPORT, so every shard can bind the same address and the
/// kernel spreads new connections across them.
pub fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = tcp_socket(addr)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// The ports a shard takes connections on: the plaintext one, the TLS one, or both.
pub struct Ports {
    pub plain: Option<TcpListener>,
    pub tls: Option<TlsPort>,
}

/// The shard's listener on the TLS port, and the configuration its handshakes use (replaced on
/// SIGHUP; each handshake takes the one in force when it starts).
pub struct TlsPort {
    pub listener: TcpListener,
    pub config: watch::Receiver<Arc<rustls::ServerConfig>>,
    pub handshake_timeout: Duration,
}

/// Serves every connection the shard's ports take until `shutdown`, then waits up to the drain
/// timeout for the open ones to finish. A connection in its TLS handshake counts as open.
pub async fn run(ports: Ports, serving: Rc<Serving>, mut shutdown: watch::Receiver<bool>) {
    let stats = serving.stats.clone();
    let shard = serving.shard;
    let max_connections = serving.settings.max_connections_per_shard;
    let open = Rc::new(OpenConnections::default());
    // This shard's connections hear of shutdown on a channel of their own: each one waits on it
    // every turn, and the process-wide channel's lock would be shared by every shard's.
    let (stop_connections, connections_stop) = watch::channel(false);
    loop {
        let (accepted, tls) = tokio::select! {
            a = accept(ports.plain.as_ref()) => (a, None),
            a = accept(ports.tls.as_ref().map(|t| &t.listener)) => (a, ports.tls.as_ref()),
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(shard, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        stats.connections_accepted.inc();
        if open.count.get() >= max_connections {
            stats.connections_refused.inc();
            // A TLS client could not read a plaintext answer: it is only closed.
            if tls.is_none() {
                tokio::task::spawn_local(refuse(stream, max_connections));
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        let guard = open.enter(&stats);
        let (serving, mut shutdown) = (serving.clone(), connections_stop.clone());
        let tls = tls.map(|t| (t.config.borrow().clone(), t.handshake_timeout));
        tokio::task::spawn_local(async move {
            let (transport, peer_names) = match tls {
                None => (Transport::plain(stream), Vec::new()),
                Some((config, timeout)) => {
                    let handshake = tls::handshake(stream, config, timeout);
                    let outcome = tokio::select! {
                        r = handshake => r,
                        _ = shutdown.changed() => return,
                    };
                    match outcome {
                        Ok(a) => {
                            let stats = &serving.stats;
                            stats.tls_handshakes[Handshake::Ok as usize].inc();
                            stats.tls_handshake_micros.add(a.took.as_micros() as u64);
                            (a.transport, a.peer_names)
                        }
                        Err(why) => {
                            serving.stats.tls_handshakes[why as usize].inc();
                            debug!(shard, %peer, reason = why.name(), "TLS handshake refused");
                            return;
                        }
                    }
                }
            };
            connection::serve(transport, peer_names, serving, shutdown).await;
            drop(guard);
        });
    }
    drop(ports);
    let _ = stop_connections.send(true);
    if tokio::time::timeout(serving.settings.drain_timeout, open.drained())
        .await
        .is_err()
    {
        warn!(
            shard,
            still_open = open.count.get(),
            "drain timeout passed with requests in flight; closing them"
        );
    }
}

/// The next connection on `listener`; never, without one.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Tells a connection over the limit why it is closed, without waiting on a slow peer.
async fn refuse(mut stream: TcpStream, max_connections: usize) {
    let err = ProtocolError::new(
        ErrorCode::Overloaded,
        format!(
            "this shard already serves {max_connections} connections (max_connections_per_shard); retry later or reuse connections"
        ),
    );
    let mut out = bytes::BytesMut::new();
    Response::Error(err).encode(&mut out, 0);
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.write_all(&out)).await;
}

/// Counts this shard's open connections so shutdown can wait for them.
#[derive(Default)]
struct OpenConnections {
    count: Cell<usize>,
    zero: Notify,
}

struct OpenGuard {
    open: Rc<OpenConnections>,
    stats: Arc<ShardStats>,
}

impl OpenConnections {
    fn enter(self: &Rc<Self>, stats: &Arc<ShardStats>) -> OpenGuard {
        self.count.set(self.count.get() + 1);
        stats.connections_open.inc();
        OpenGuard {
            open: self.clone(),
            stats: stats.clone(),
        }
    }

    async fn drained(&self) {
        while self.count.get() > 0 {
            self.zero.notified().await;
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.open.count.set(self.open.count.get() - 1);
        self.stats.connections_open.dec();
        if self.open.count.get() == 0 {
            self.open.zero.notify_waiters();
        }
    }
}
