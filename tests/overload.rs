//! Shedding: a connection that sends faster than its shard serves it gets OVERLOADED for the
//! excess instead of a queue that grows for seconds. Every request is still answered exactly
//! once, the connection stays usable, and the sheds are counted.

mod common;

use std::io::Write;

use bytes::BytesMut;
use common::{Proxy, RawConn, Redis};
use featureproxy::serving::overload::SHED_FLOOR;
use featureproxy_protocol::{ErrorCode, GetRequest, Keys, Limits, Request, Response};

#[test]
fn a_flood_on_one_connection_is_shed_and_every_request_answered() {
    let redis = Redis::start();
    // A target this small sheds whenever anything at all waits: the test needs no timing.
    let proxy = Proxy::start(&redis, 1, "shed_queue_delay = \"1us\"");
    let mut conn = RawConn::connect(proxy.port);
    let schema = conn.schema("user_features");
    let n: u32 = 20_000;
    let mut flood = BytesMut::new();
    for id in 1..=n {
        Request::Get(GetRequest {
            view_id: schema.view_id,
            flags: 0,
            schema_id: schema.schema_id,
            deadline_us: 0,
            keys: Keys::from_slices(&["u1"]),
        })
        .encode(&mut flood, id);
    }
    // Sent from a thread of its own while this one reads, so neither side's buffers fill up.
    let mut writer = conn.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&flood).unwrap());

    let limits = Limits {
        max_frame: u32::MAX,
        max_batch: u32::MAX,
    };
    let mut answered = vec![false; n as usize + 1];
    let (mut served, mut shed) = (0u32, 0u32);
    for _ in 0..n {
        let frame = conn.recv().expect("the connection stays open");
        let id = frame.request_id as usize;
        assert!(
            (1..=n as usize).contains(&id) && !answered[id],
            "request {id} answered twice or never sent"
        );
        answered[id] = true;
        match Response::decode(&frame, &limits).unwrap() {
            Response::Get(_) => served += 1,
            Response::Error(e) if e.code == ErrorCode::Overloaded => {
                assert!(e.message.contains("shed_queue_delay"), "{}", e.message);
                shed += 1;
            }
            other => panic!("request {id}: unexpected {other:?}"),
        }
    }
    sender.join().unwrap();
    assert!(shed > 0, "a flood of {n} GETs with a 1us target sheds some");
    assert!(
        served > 0,
        "frames read before the pace is known are served"
    );
    assert_eq!(
        proxy.metric("featureproxy_requests_shed_total", &[]),
        shed as f64
    );
    assert_eq!(
        proxy.metric("featureproxy_errors_total", &[("code", "overloaded")]),
        shed as f64
    );
    assert!(
        matches!(conn.call(&Request::Ping), Response::Pong),
        "the connection is kept"
    );
}

/// A queue standing in the shard (here: Redis frozen, so every GET waits out its deadline) sheds
/// the GETs of a connection with many in flight at once, instead of adding them to the queue;
/// the requests it had admitted are still answered (DEGRADED, with the defaults).
#[test]
fn a_standing_queue_sheds_a_deep_pipeline_at_once() {
    let redis = Redis::start();
    // The breaker never opens here, so every GET waits on the frozen Redis until its deadline.
    let proxy = Proxy::start(
        &redis,
        1,
        "shed_queue_delay = \"1ms\"\nbreaker_min_failures = 1000000",
    );
    let mut conn = RawConn::connect(proxy.port);
    let schema = conn.schema("user_features");
    let limits = Limits {
        max_frame: u32::MAX,
        max_batch: u32::MAX,
    };
    let get = |conn: &mut RawConn, id: u32, entity: String| {
        let mut out = BytesMut::new();
        Request::Get(GetRequest {
            view_id: schema.view_id,
            flags: featureproxy_protocol::GET_FLAG_BYPASS_CACHE,
            schema_id: schema.schema_id,
            deadline_us: 150_000,
            keys: Keys::from_slices(&[entity]),
        })
        .encode(&mut out, id);
        conn.send_raw(&out);
    };
    redis.freeze();
    // Two waves of GETs that each wait out their 150 ms deadline: two intervals of the shard's
    // pressure test in which no GET was quick, so a queue stands.
    let mut id = 0;
    for wave in 0..2 {
        for i in 0..10 {
            id += 1;
            get(&mut conn, id, format!("w{wave}-{i}"));
        }
        for _ in 0..10 {
            let frame = conn.recv().expect("answered");
            assert!(matches!(
                Response::decode(&frame, &limits).unwrap(),
                Response::Get(_)
            ));
        }
    }
    // A deep pipeline now: the shard answered too few to admit more than the floor, so the
    // first SHED_FLOOR + 1 are admitted (a connection with up to SHED_FLOOR in flight is never
    // shed for the shard's queue), every later one is shed at once.
    let n = 300u32;
    let first = id + 1;
    for i in 0..n {
        id += 1;
        get(&mut conn, id, format!("deep-{i}"));
    }
    let (mut shed, mut served) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let frame = conn.recv().expect("every request is answered");
        match Response::decode(&frame, &limits).unwrap() {
            Response::Error(e) if e.code == ErrorCode::Overloaded => {
                assert!(served.is_empty(), "a shed GET waited behind a served one");
                shed.push(frame.request_id);
            }
            Response::Get(g) => {
                assert_eq!(g.status(0).status, featureproxy_protocol::Status::Degraded);
                served.push(frame.request_id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    redis.thaw();
    assert!(
        (SHED_FLOOR + 1..=SHED_FLOOR + 6).contains(&served.len()),
        "{} served, {} shed",
        served.len(),
        shed.len()
    );
    assert_eq!(shed.len() + served.len(), n as usize);
    assert!(
        served.iter().all(|&r| r < first + SHED_FLOOR as u32 + 6),
        "the admitted GETs are the first ones"
    );
    assert_eq!(
        proxy.metric("featureproxy_requests_shed_total", &[]),
        shed.len() as f64
    );
}
