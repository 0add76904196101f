//! Bad and hostile input against the real proxy: every case gets the error the protocol names,
//! and no connection's trouble reaches another.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{Proxy, RawConn, Redis};
use featureproxy_protocol::{ErrorCode, GetRequest, Hello, Keys, Limits, Request, Response};

fn hello(token: &str) -> Request {
    Request::Hello(Hello {
        version: 1,
        token: token.into(),
        client_name: "edges".into(),
    })
}

fn get(view_id: u16, schema_id: u32, keys: &[&str]) -> Request {
    Request::Get(GetRequest {
        view_id,
        flags: 0,
        schema_id,
        deadline_us: 0,
        keys: Keys::from_slices(keys),
    })
}

/// The code of the ERROR frame that comes next, and whether the server then closed.
fn error_then_closed(c: &mut RawConn) -> (ErrorCode, bool) {
    let f = c.recv().expect("an ERROR frame before the close");
    let Response::Error(e) = Response::decode(&f, &Limits::default()).unwrap() else {
        panic!("not an ERROR frame: {f:?}")
    };
    (e.code, c.is_closed())
}

#[test]
fn errors_that_keep_and_errors_that_close() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 2, "");
    let mut good = RawConn::connect(proxy.port);
    let s = good.schema("user_features");

    assert_eq!(
        good.expect_error(&get(99, 0, &["a"])).code,
        ErrorCode::UnknownView
    );
    let e = good.expect_error(&get(s.view_id, s.schema_id ^ 1, &["a"]));
    assert_eq!(e.code, ErrorCode::SchemaMismatch);
    assert!(e.message.contains("user_features"), "{}", e.message);
    let keys: Vec<String> = (0..4097).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
    let e = good.expect_error(&get(s.view_id, 0, &keys));
    assert_eq!(e.code, ErrorCode::BatchTooLarge);
    assert!(e.message.contains("4096"), "{}", e.message);
    // Unknown op: its body is skipped, the connection goes on.
    good.send_raw(&[12, 0, 0, 0, 0x42, 0, 0, 0, 7, 0, 0, 0, 1, 2, 3, 4]);
    let f = good.recv().unwrap();
    assert_eq!((f.op, f.request_id), (0xFF, 7));
    assert!(matches!(good.call(&Request::Ping), Response::Pong));

    // MALFORMED (a truncated GET body) closes that connection only.
    let mut bad = RawConn::connect(proxy.port);
    bad.send_raw(&[11, 0, 0, 0, 0x10, 0, 0, 0, 5, 0, 0, 0, 1, 2, 3]);
    assert_eq!(error_then_closed(&mut bad), (ErrorCode::Malformed, true));
    // FRAME_TOO_LARGE is judged from the header alone.
    let mut big = RawConn::connect(proxy.port);
    big.send_raw(&[1, 0, 0x40, 0, 0x02, 0, 0, 0, 9, 0, 0, 0]);
    assert_eq!(
        error_then_closed(&mut big),
        (ErrorCode::FrameTooLarge, true)
    );
    // Nonzero header flags are MALFORMED in v1.
    let mut flags = RawConn::connect(proxy.port);
    flags.send_raw(&[8, 0, 0, 0, 0x02, 1, 0, 0, 9, 0, 0, 0]);
    assert_eq!(error_then_closed(&mut flags), (ErrorCode::Malformed, true));
    // HELLO with another version, and HELLO after the first frame.
    let mut v2 = RawConn::connect(proxy.port);
    v2.send(&Request::Hello(Hello {
        version: 2,
        token: String::new(),
        client_name: "x".into(),
    }));
    assert_eq!(
        error_then_closed(&mut v2),
        (ErrorCode::UnsupportedVersion, true)
    );
    let mut late = RawConn::connect(proxy.port);
    late.call(&Request::Ping);
    late.send(&hello(""));
    assert_eq!(error_then_closed(&mut late), (ErrorCode::Malformed, true));

    assert!(matches!(good.call(&Request::Ping), Response::Pong));
    assert_eq!(
        proxy.metric("featureproxy_errors_total", &[("code", "malformed")]),
        3.0
    );
    assert_eq!(
        proxy.metric("featureproxy_errors_total", &[("code", "frame_too_large")]),
        1.0
    );
}

#[test]
fn auth_token_is_required_first_and_must_match() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 1, "auth_token = \"s3cret\"");
    let mut none = RawConn::connect(proxy.port);
    none.send(&Request::Ping);
    assert_eq!(
        error_then_closed(&mut none),
        (ErrorCode::Unauthorized, true)
    );
    let mut wrong = RawConn::connect(proxy.port);
    wrong.send(&hello("s3cre"));
    assert_eq!(
        error_then_closed(&mut wrong),
        (ErrorCode::Unauthorized, true)
    );
    let mut right = RawConn::connect(proxy.port);
    assert!(matches!(right.call(&hello("s3cret")), Response::Hello(_)));
    assert!(matches!(right.call(&Request::Ping), Response::Pong));
}

#[test]
fn half_frames_random_bytes_and_idle_floods_do_not_stop_service() {
    let redis = Redis::start();
    let proxy = Proxy::start(
        &redis,
        1,
        "frame_timeout = \"300ms\"\nmax_connections_per_shard = 40",
    );
    // A peer that sends half a frame and waits is cut off after frame_timeout.
    let mut half = RawConn::connect(proxy.port);
    half.send_raw(&[100, 0, 0, 0, 0x02, 0, 0, 0]);
    let t = Instant::now();
    assert_eq!(error_then_closed(&mut half), (ErrorCode::Malformed, true));
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    // Nor can it keep one open by sending a byte now and then: the frame must be whole within
    // frame_timeout of its first bytes. Here a byte every 50 ms would take 4.6 s to finish it.
    let mut trickle = RawConn::connect(proxy.port);
    trickle.send_raw(&[100, 0, 0, 0, 0x02, 0, 0, 0]);
    let mut writer = trickle.stream.try_clone().unwrap();
    let t = Instant::now();
    let dripping = std::thread::spawn(move || {
        let mut sent = 0;
        // Stops when the proxy has closed the connection (or the frame is whole).
        while sent < 92 && writer.write_all(&[0]).is_ok() {
            sent += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        sent
    });
    assert_eq!(
        error_then_closed(&mut trickle),
        (ErrorCode::Malformed, true)
    );
    let took = t.elapsed();
    assert!(
        (Duration::from_millis(250)..Duration::from_millis(2500)).contains(&took),
        "a trickled frame was cut off after {took:?}, not about frame_timeout (300 ms)"
    );
    assert!(dripping.join().unwrap() < 92, "the whole frame went out");

    // Random garbage: an error and a close, never a crash.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..20 {
        let mut junk = RawConn::connect(proxy.port);
        let bytes: Vec<u8> = (0..512)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = junk.stream.write_all(&bytes);
        while junk.recv().is_some() {}
    }

    // Fill the shard with idle connections: the next is refused with OVERLOADED...
    let mut idle: Vec<RawConn> = (0..39).map(|_| RawConn::connect(proxy.port)).collect();
    let mut c = RawConn::connect(proxy.port);
    assert!(matches!(c.call(&Request::Ping), Response::Pong));
    let mut over = RawConn::connect(proxy.port);
    assert_eq!(error_then_closed(&mut over), (ErrorCode::Overloaded, true));
    // ...and those already in keep working; once idle ones leave, new ones get in.
    assert!(matches!(idle[0].call(&Request::Ping), Response::Pong));
    idle.truncate(10);
    common::eventually(Duration::from_secs(5), "a free connection slot", || {
        let mut n = RawConn::connect(proxy.port);
        n.send(&Request::Ping);
        let f = n.recv()?;
        (f.op == 0x82).then_some(())
    });
    assert!(matches!(c.call(&Request::Ping), Response::Pong));
}

#[test]
fn sigterm_finishes_requests_in_flight_and_exits_zero() {
    let redis = Redis::start();
    let mut proxy = Proxy::start(&redis, 2, "");
    let mut c = RawConn::connect(proxy.port);
    let s = c.schema("user_features");
    redis.freeze();
    // A GET that must wait (Redis is frozen) for its 2 s deadline...
    let id = c.send(&Request::Get(GetRequest {
        view_id: s.view_id,
        flags: 0,
        schema_id: 0,
        // Long enough that a loaded machine's metrics scrape still sees it in flight.
        deadline_us: 2_000_000,
        keys: Keys::from_slices(&["u1"]),
    }));
    // ...is in flight when SIGTERM arrives.
    common::eventually(Duration::from_secs(5), "the GET in flight", || {
        (proxy.metric("featureproxy_inflight_requests", &[]) == 1.0).then_some(())
    });
    let stopper = std::thread::spawn(move || proxy.stop());
    let f = c
        .recv()
        .expect("the in-flight GET is answered before the close");
    assert_eq!((f.op, f.request_id), (0x90, id));
    let Response::Get(g) = Response::decode(&f, &Limits::default()).unwrap() else {
        unreachable!()
    };
    assert_eq!(g.status(0).status, featureproxy_protocol::Status::Degraded);
    assert!(c.is_closed());
    redis.thaw();
    let status = stopper.join().unwrap();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[test]
fn a_client_that_leaves_mid_request_hurts_nobody() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 1, "");
    let mut other = RawConn::connect(proxy.port);
    let s = other.schema("user_features");
    redis.freeze();
    {
        let mut leaver = RawConn::connect(proxy.port);
        leaver.send(&Request::Get(GetRequest {
            view_id: s.view_id,
            flags: 0,
            schema_id: 0,
            deadline_us: 2_000_000,
            keys: Keys::from_slices(&["a", "b", "c"]),
        }));
        common::eventually(Duration::from_secs(5), "the GET in flight", || {
            (proxy.metric("featureproxy_inflight_requests", &[]) == 1.0).then_some(())
        });
        // Dropped here: the socket closes while its GET waits on Redis.
    }
    redis.thaw();
    common::eventually(
        Duration::from_secs(5),
        "the abandoned GET to finish",
        || {
            (proxy.metric("featureproxy_inflight_requests", &[]) == 0.0
                && proxy.metric("featureproxy_connections_open", &[]) == 1.0)
                .then_some(())
        },
    );
    assert!(matches!(other.call(&Request::Ping), Response::Pong));
    let Response::Get(g) = other.call(&get(s.view_id, 0, &["a"])) else {
        panic!("GET failed")
    };
    assert_eq!(g.status(0).status, featureproxy_protocol::Status::Missing);
}

#[test]
fn a_client_that_never_reads_its_replies_is_stopped_not_buffered() {
    let redis = Redis::start();
    let proxy = Proxy::start(&redis, 1, "");
    let mut probe = RawConn::connect(proxy.port);
    let s = probe.schema("user_features");
    let before = proxy.rss_bytes();

    // 100 requests per write, each asking for 100 entities: about 7 KB of reply per 1 KB sent.
    let keys: Vec<String> = (0..100).map(|i| format!("never-read-{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
    let mut chunk = bytes::BytesMut::new();
    for id in 0..100 {
        get(s.view_id, 0, &keys).encode(&mut chunk, id);
    }
    let mut greedy = RawConn::connect(proxy.port);
    greedy
        .stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut sent = 0usize;
    // Writes block once the proxy stops reading and the socket buffers fill: the event awaited.
    let stopped = loop {
        match greedy.stream.write_all(&chunk) {
            Ok(()) => sent += chunk.len(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break true
            }
            Err(e) => panic!("write failed: {e}"),
        }
        if sent > 64 << 20 {
            break false;
        }
    };
    assert!(
        stopped,
        "the proxy kept reading 64 MiB of requests whose replies nobody read"
    );
    let grown = proxy.rss_bytes().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "proxy grew by {grown} bytes for a client that never reads"
    );
    // Everyone else is served as usual.
    assert!(matches!(probe.call(&Request::Ping), Response::Pong));
    let Response::Get(g) = probe.call(&get(s.view_id, 0, &["x"])) else {
        panic!("GET failed")
    };
    assert_eq!(g.status(0).status, featureproxy_protocol::Status::Missing);
}
