//! Routing one admitted request. HELLO, PING, SCHEMA, and GETs whose rows are all at hand are
//! answered on the spot, in the connection's own turn. A GET that waits on the store, and every
//! PUT, joins the connection's [`InFlight`] requests and hands its reply to the outbox when done.

use std::rc::Rc;
use std::time::Instant;

use featureproxy_protocol::{Op, ProtocolError, Request, Response};

use super::inflight::InFlight;
use super::outbox::Outbox;
use super::Serving;

/// Answers `req` (request id `rid`, read at `started`) into `outbox`, or leaves it in `inflight`
/// to answer there once the store has.
pub fn dispatch(
    serving: &Rc<Serving>,
    outbox: &Rc<Outbox>,
    inflight: &mut InFlight,
    req: Request,
    rid: u32,
    started: Instant,
) {
    let op = req.op();
    let answered = match req {
        Request::Hello(_) => Ok(serving.hello_reply()),
        Request::Ping => Ok(Response::Pong),
        Request::Schema { view } => serving.schema(&view),
        Request::Get(get) => match serving.begin_get(get, started) {
            Ok(work) if work.is_ready() => {
                outbox.push(|b| serving.finish_get(work, b, rid));
                serving.stats.request_ok(op);
                return;
            }
            Ok(work) => {
                let serving2 = serving.clone();
                let out = outbox.clone();
                wait_for_store(serving, outbox, inflight, op, rid, async move {
                    work.wait().await;
                    let now = Instant::now();
                    let waited = now.saturating_duration_since(started);
                    serving2.pressure.borrow_mut().record(waited, now);
                    out.push(|b| serving2.finish_get(work, b, rid));
                    Ok(())
                });
                return;
            }
            Err(e) => Err(e),
        },
        Request::Put(put) => {
            let (serving2, out) = (serving.clone(), outbox.clone());
            wait_for_store(serving, outbox, inflight, op, rid, async move {
                let resp = serving2.put(put, started).await?;
                out.response(&resp, rid);
                Ok(())
            });
            return;
        }
    };
    match answered {
        Ok(resp) => {
            outbox.response(&resp, rid);
            serving.stats.request_ok(op);
        }
        Err(e) => {
            serving.stats.request_failed(op);
            outbox.error(&serving.stats, e, rid);
        }
    }
}

/// Leaves a request that waits on the store in the connection's `inflight`, counted in flight
/// until it has answered. `work` queues the reply itself; an error becomes an ERROR frame.
fn wait_for_store(
    serving: &Rc<Serving>,
    outbox: &Rc<Outbox>,
    inflight: &mut InFlight,
    op: Op,
    rid: u32,
    work: impl std::future::Future<Output = Result<(), ProtocolError>> + 'static,
) {
    let (serving, outbox) = (serving.clone(), outbox.clone());
    serving.stats.inflight_requests.inc();
    inflight.push(async move {
        match work.await {
            Ok(()) => serving.stats.request_ok(op),
            Err(e) => {
                serving.stats.request_failed(op);
                outbox.error(&serving.stats, e, rid)
            }
        }
        serving.stats.inflight_requests.dec();
    });
}
