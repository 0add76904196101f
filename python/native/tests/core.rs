//! The blocking core against a scripted server on loopback: connecting, a call on the caller's
//! thread, the wait bound, interruption between slices, close() under a waiting call, several
//! threads on one client, and a client inherited through fork being left alone.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use featureproxy_client::Error;
use featureproxy_native::core::{Core, Options, Outcome, SLICE};
use featureproxy_protocol::{decode_frame, HelloReply, Limits, Request, Response};

/// Answers HELLO and PING; a PING is left unanswered while `mute` is set. Counts connections.
struct Server {
    port: u16,
    accepted: Arc<AtomicUsize>,
    mute: Arc<AtomicBool>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let mute = Arc::new(AtomicBool::new(false));
        let (a, m) = (accepted.clone(), mute.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                a.fetch_add(1, Ordering::SeqCst);
                let m = m.clone();
                thread::spawn(move || serve(conn, &m));
            }
        });
        Server {
            port,
            accepted,
            mute,
        }
    }

    fn options(&self, timeout: Duration) -> Options {
        Options {
            connect_to: format!("127.0.0.1:{}", self.port),
            token: None,
            client_name: "core-test".into(),
            timeout,
            pool_size: 1,
            retry_overloaded: true,
            overload_backoff: Duration::from_millis(20),
            tls: None,
        }
    }
}

fn serve(mut conn: TcpStream, mute: &AtomicBool) {
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Ok(Some(frame)) = decode_frame(&mut buf, u32::MAX) {
            let resp = match Request::decode(&frame, &Limits::default()) {
                Ok(Request::Hello(_)) => Response::Hello(HelloReply {
                    version: 1,
                    shard: 0,
                    max_frame: 1 << 20,
                    max_batch: 64,
                    server: "scripted/1".into(),
                }),
                Ok(Request::Ping) if !mute.load(Ordering::SeqCst) => Response::Pong,
                _ => continue,
            };
            let mut out = BytesMut::new();
            resp.encode(&mut out, frame.request_id);
            if conn.write_all(&out).is_err() {
                return;
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn no_hook() -> impl FnMut() -> Result<(), ()> {
    || Ok(())
}

fn connected(core: &Core) -> Arc<featureproxy_native::core::Live> {
    match core.open(no_hook()) {
        Outcome::Done(Ok(live)) => core.install(live).unwrap(),
        other => panic!("connect: {other:?}", other = outcome_name(&other)),
    }
}

fn outcome_name<T, I>(o: &Outcome<T, I>) -> String {
    match o {
        Outcome::Done(Ok(_)) => "ok".into(),
        Outcome::Done(Err(e)) => format!("error {e}"),
        Outcome::TimedOut => "timed out".into(),
        Outcome::Closed => "closed".into(),
        Outcome::Interrupted(_) => "interrupted".into(),
    }
}

#[test]
fn connects_and_calls_on_the_callers_thread() {
    let srv = Server::start();
    let core = Core::new(srv.options(Duration::from_secs(5)));
    let live = connected(&core);
    assert_eq!(live.hello().server, "scripted/1");
    assert_eq!((core.max_frame(), core.max_batch()), (1 << 20, 64));
    assert_eq!(core.server(), "scripted/1");
    for _ in 0..3 {
        let out = core.call(&live, Duration::from_secs(5), |c| c.ping(), no_hook());
        assert!(
            matches!(out, Outcome::Done(Ok(_))),
            "{}",
            outcome_name(&out)
        );
    }
    assert_eq!(core.inflight(), 0);
    assert_eq!(srv.accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn a_refused_connect_is_a_connect_error() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let core = Core::new(Options {
        connect_to: format!("127.0.0.1:{port}"),
        token: None,
        client_name: "t".into(),
        timeout: Duration::from_secs(2),
        pool_size: 1,
        retry_overloaded: true,
        overload_backoff: Duration::from_millis(20),
        tls: None,
    });
    let out = core.open(no_hook());
    assert!(
        matches!(out, Outcome::Done(Err(Error::Connect { .. }))),
        "{}",
        outcome_name(&out)
    );
}

#[test]
fn an_unanswered_call_times_out_within_its_wait() {
    let srv = Server::start();
    let core = Core::new(srv.options(Duration::from_secs(5)));
    let live = connected(&core);
    srv.mute.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    let out = core.call(&live, Duration::from_millis(120), |c| c.ping(), no_hook());
    let took = t0.elapsed();
    assert!(matches!(out, Outcome::TimedOut), "{}", outcome_name(&out));
    assert!(
        took >= Duration::from_millis(120) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(core.inflight(), 0);
    srv.mute.store(false, Ordering::SeqCst);
    let out = core.call(&live, Duration::from_secs(5), |c| c.ping(), no_hook());
    assert!(
        matches!(out, Outcome::Done(Ok(_))),
        "{}",
        outcome_name(&out)
    );
}

#[test]
fn the_hook_interrupts_between_slices() {
    let srv = Server::start();
    let core = Core::new(srv.options(Duration::from_secs(30)));
    let live = connected(&core);
    srv.mute.store(true, Ordering::SeqCst);
    let mut runs = 0;
    let t0 = Instant::now();
    let out = core.call(
        &live,
        Duration::from_secs(30),
        |c| c.ping(),
        || {
            runs += 1;
            if runs == 2 {
                Err("stop")
            } else {
                Ok(())
            }
        },
    );
    let took = t0.elapsed();
    assert!(
        matches!(out, Outcome::Interrupted("stop")),
        "{}",
        outcome_name(&out)
    );
    assert!(
        took >= 2 * SLICE && took < 2 * SLICE + Duration::from_secs(1),
        "{took:?}"
    );
    assert_eq!(core.inflight(), 0);
}

#[test]
fn close_ends_a_waiting_call_and_later_ones() {
    let srv = Server::start();
    let core = Arc::new(Core::new(srv.options(Duration::from_secs(30))));
    let live = connected(&core);
    srv.mute.store(true, Ordering::SeqCst);
    let waiter = {
        let core = core.clone();
        thread::spawn(move || {
            let t0 = Instant::now();
            let out = core.call(&live, Duration::from_secs(30), |c| c.ping(), no_hook());
            (matches!(out, Outcome::Closed), t0.elapsed())
        })
    };
    while core.inflight() == 0 {
        thread::sleep(Duration::from_millis(1));
    }
    core.close();
    let (closed, took) = waiter.join().unwrap();
    assert!(closed);
    assert!(took < SLICE + Duration::from_secs(1), "{took:?}");
    assert!(core.is_closed() && core.current().is_err());
}

#[test]
fn threads_share_one_client() {
    let srv = Server::start();
    let core = Arc::new(Core::new(srv.options(Duration::from_secs(10))));
    let live = connected(&core);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (core, live) = (core.clone(), live.clone());
            thread::spawn(move || {
                (0..200)
                    .filter(|_| {
                        matches!(
                            core.call(&live, Duration::from_secs(10), |c| c.ping(), no_hook()),
                            Outcome::Done(Ok(_))
                        )
                    })
                    .count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(ok, 8 * 200);
    assert_eq!(core.inflight(), 0);
    assert_eq!(srv.accepted.load(Ordering::SeqCst), 1);
}
