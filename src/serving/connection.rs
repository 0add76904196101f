//! One client connection: read frames, pass each through the session's handshake and dispatch
//! it; replies leave through the connection's outbox. Past `max_inflight_per_connection`
//! requests in flight the reader stops reading from the socket: TCP backpressure, not an
//! unbounded queue.

use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use featureproxy_protocol::{decode_frame, Limits, ProtocolError, Request};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use super::dispatch::dispatch;
use super::outbox::Outbox;
use super::session::Session;
use super::Serving;
use crate::telemetry::counters::CloseReason;

/// Serves one connection until the peer leaves, a fatal protocol error, or shutdown.
pub async fn serve(stream: TcpStream, serving: Rc<Serving>, mut shutdown: watch::Receiver<bool>) {
    let (mut rd, wr) = stream.into_split();
    let outbox = Rc::new(Outbox::default());
    let writer = tokio::task::spawn_local(outbox.clone().run_writer(wr, serving.stats.clone()));
    let settings = serving.settings.clone();
    let stats = serving.stats.clone();
    let max_inflight = settings.max_inflight_per_connection;
    let permits = Arc::new(Semaphore::new(max_inflight));
    let limits = Limits {
        max_frame: settings.max_frame,
        max_batch: settings.max_batch,
    };
    let token = settings.auth_token.as_deref();
    let mut session = Session::new(token.is_some());
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut reason = CloseReason::Peer;

    'read: loop {
        loop {
            match decode_frame(&mut rbuf, limits.max_frame) {
                Ok(Some(frame)) => {
                    outbox.room(limits.max_frame as usize).await;
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        break 'read;
                    };
                    let started = std::time::Instant::now();
                    let rid = frame.request_id;
                    match session.admit(Request::decode(&frame, &limits), token) {
                        Ok(req) => dispatch(&serving, &outbox, req, rid, started, permit),
                        Err(refusal) => {
                            outbox.error(&stats, refusal.error, rid);
                            if refusal.close {
                                reason = CloseReason::ProtocolError;
                                break 'read;
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err((request_id, err)) => {
                    outbox.error(&stats, err, request_id);
                    reason = CloseReason::ProtocolError;
                    break 'read;
                }
            }
        }
        if outbox.is_dead() {
            reason = CloseReason::Io;
            break;
        }
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(16 * 1024);
        }
        let read = if rbuf.is_empty() {
            tokio::select! {
                r = rd.read_buf(&mut rbuf) => r,
                _ = shutdown.changed() => {
                    reason = CloseReason::Shutdown;
                    break;
                }
            }
        } else {
            // Part of a frame is in: the rest must follow within frame_timeout, so a peer
            // cannot hold a half frame (and its buffer) open forever.
            tokio::select! {
                r = tokio::time::timeout(settings.frame_timeout, rd.read_buf(&mut rbuf)) => match r {
                    Ok(r) => r,
                    Err(_) => {
                        let msg = format!(
                            "frame incomplete after {:?}: {} bytes of a frame received, the rest never came",
                            settings.frame_timeout,
                            rbuf.len()
                        );
                        outbox.error(&stats, ProtocolError::malformed(msg), 0);
                        reason = CloseReason::FrameTimeout;
                        break;
                    }
                },
                _ = shutdown.changed() => {
                    reason = CloseReason::Shutdown;
                    break;
                }
            }
        };
        match read {
            Ok(0) => break,
            Ok(n) => stats.bytes_in.add(n as u64),
            Err(_) => {
                reason = CloseReason::Io;
                break;
            }
        }
    }
    // Let requests in flight finish (shutdown waits for them up to its drain timeout).
    let _ = permits.acquire_many(max_inflight as u32).await;
    outbox.close();
    let _ = writer.await;
    if outbox.write_failed() {
        reason = CloseReason::Io;
    }
    stats.connections_closed[reason as usize].inc();
}
