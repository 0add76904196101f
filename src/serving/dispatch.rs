//! Routing one admitted request: HELLO, PING and SCHEMA are answered on the spot; GET and PUT,
//! which wait on the store, run as tasks of their own holding the connection's in-flight permit.

use std::rc::Rc;
use std::time::Instant;

use featureproxy_protocol::{Op, ProtocolError, Request, Response};
use tokio::sync::OwnedSemaphorePermit;

use super::outbox::Outbox;
use super::Serving;

/// Answers `req` (request id `rid`, read at `started`) into `outbox`.
pub fn dispatch(
    serving: &Rc<Serving>,
    outbox: &Rc<Outbox>,
    req: Request,
    rid: u32,
    started: Instant,
    permit: OwnedSemaphorePermit,
) {
    let op = req.op();
    match req {
        Request::Hello(_) => outbox.response(&serving.hello_reply(), rid),
        Request::Ping => outbox.response(&Response::Pong, rid),
        Request::Schema { view } => match serving.schema(&view) {
            Ok(r) => outbox.response(&r, rid),
            Err(e) => {
                serving.stats.request_failed(op);
                outbox.error(&serving.stats, e, rid);
                return;
            }
        },
        Request::Get(get) => {
            let work = {
                let (serving, outbox) = (serving.clone(), outbox.clone());
                async move {
                    let reply = serving.get(get, started).await?;
                    outbox.push(|b| reply.encode(b, rid));
                    Ok(())
                }
            };
            spawn_request(serving, outbox, op, rid, permit, work);
            return;
        }
        Request::Put(put) => {
            let work = {
                let (serving, outbox) = (serving.clone(), outbox.clone());
                async move {
                    let resp = serving.put(put, started).await?;
                    outbox.response(&resp, rid);
                    Ok(())
                }
            };
            spawn_request(serving, outbox, op, rid, permit, work);
            return;
        }
    }
    serving.stats.request_ok(op);
}

/// Runs a request that waits on the store as a task of its own, holding its in-flight permit
/// until it has answered. `work` queues the reply itself; an error becomes an ERROR frame.
fn spawn_request(
    serving: &Rc<Serving>,
    outbox: &Rc<Outbox>,
    op: Op,
    rid: u32,
    permit: OwnedSemaphorePermit,
    work: impl std::future::Future<Output = Result<(), ProtocolError>> + 'static,
) {
    let (serving, outbox) = (serving.clone(), outbox.clone());
    serving.stats.inflight_requests.inc();
    tokio::task::spawn_local(async move {
        match work.await {
            Ok(()) => serving.stats.request_ok(op),
            Err(e) => {
                serving.stats.request_failed(op);
                outbox.error(&serving.stats, e, rid)
            }
        }
        serving.stats.inflight_requests.dec();
        drop(permit);
    });
}
