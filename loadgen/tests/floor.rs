//! `loadgen floor` end to end: the client's SCHEMA call and loadgen's engine both work against
//! it, every GET is answered FRESH with rows of the schema's size, and it refuses what a real
//! proxy would refuse.

use std::sync::Arc;
use std::time::Duration;

use featureproxy_client::{Client, ClientOptions};
use loadgen::driver::{run, Proto, RunConfig};
use loadgen::floor::{start, FloorConfig, VIEW_ID};
use loadgen::spec::{BatchSpec, Target};
use loadgen::workload::Workload;

fn floor(row_bytes: u32) -> std::net::SocketAddr {
    start(
        "127.0.0.1:0",
        FloorConfig {
            view: "user_features".into(),
            row_bytes,
        },
    )
    .unwrap()
}

fn client(addr: std::net::SocketAddr) -> (tokio::runtime::Runtime, Client) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = ClientOptions {
        token: None,
        client_name: "test".into(),
        timeout: Duration::from_secs(2),
        pool_size: 1,
        ..Default::default()
    };
    let c = rt
        .block_on(Client::connect(&addr.to_string(), opts))
        .unwrap();
    (rt, c)
}

#[test]
fn schema_and_gets_through_the_client() {
    let addr = floor(64);
    let (rt, c) = client(addr);
    let schema = rt.block_on(c.schema("user_features")).unwrap();
    assert_eq!(schema.view_id(), VIEW_ID);
    assert_eq!(schema.features().len(), 16);
    assert!(rt.block_on(c.schema("fraud_features")).is_err());
    let batch = rt
        .block_on(c.get("user_features", &["u:1", "u:2"]))
        .unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch.raw_row(1), &[0u8; 64][..]);
    assert_eq!(batch.age(0), Some(Duration::ZERO));

    let (rt, c) = client(floor(13));
    let schema = rt.block_on(c.schema("user_features")).unwrap();
    // 13 bytes: three f32 and one bool.
    assert_eq!(schema.features().len(), 4);
}

#[test]
fn loadgen_drives_it_without_errors() {
    let addr = floor(64);
    let (rt, c) = client(addr);
    let schema = rt.block_on(c.schema("user_features")).unwrap();
    let cfg = RunConfig {
        target: Target::Proxy(addr.to_string()),
        tls: None,
        view: "user_features".into(),
        proto: Proto::Fp {
            view_id: schema.view_id(),
            schema_id: schema.schema_id(),
            get_flags: 0,
            deadline_us: 0,
            dtypes: schema.features().iter().map(|f| f.dtype).collect(),
            token: String::new(),
        },
        workload: Arc::new(
            Workload::new(10_000, 0.99, 3, BatchSpec { min: 1, max: 100 }, 0.0, None).unwrap(),
        ),
        key_prefix: b"u:".to_vec(),
        rate: None,
        burst: None,
        connections: 2,
        inflight: 4,
        threads: 1,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(500),
        timeout: Duration::from_secs(2),
        verify_every: 0,
        progress: false,
        server_pids: vec![std::process::id()],
    };
    let m = run(cfg).unwrap();
    assert!(m.responses > 100, "{}", m.responses);
    assert_eq!(m.error_count(), 0, "{:?}", m.errors);
    assert_eq!(m.statuses[0], m.entities, "every entity FRESH");
    assert!(m.entities > m.responses, "batches of 1..100");
    assert!(m.server_cpu[0].cpu_s.as_ref().is_ok_and(|s| *s > 0.0));
}

#[test]
fn refuses_puts_a_wrong_schema_and_a_late_hello() {
    use bytes::BytesMut;
    use featureproxy_protocol::{
        decode_frame, ErrorCode, Hello, Limits, PutRequest, Request, Response,
    };
    use std::io::{Read, Write};

    let addr = floor(64);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut out = BytesMut::new();
    Request::Ping.encode(&mut out, 1);
    Request::encode_get(&mut out, 2, VIEW_ID, 0, 12345, 0, &[b"u:1".as_slice()]);
    Request::encode_get(&mut out, 3, 9, 0, 0, 0, &[b"u:1".as_slice()]);
    Request::Put(PutRequest::new(VIEW_ID, 0, &[])).encode(&mut out, 4);
    Request::Hello(Hello {
        version: 1,
        token: String::new(),
        client_name: "late".into(),
    })
    .encode(&mut out, 5);
    s.write_all(&out).unwrap();
    let mut buf = BytesMut::new();
    let mut replies = Vec::new();
    let mut chunk = [0u8; 4096];
    while replies.len() < 5 {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {replies:?}");
        buf.extend_from_slice(&chunk[..n]);
        while let Some(f) = decode_frame(&mut buf, u32::MAX).unwrap() {
            let code = match Response::decode(&f, &Limits::default()).unwrap() {
                Response::Error(e) => Some(e.code),
                _ => None,
            };
            replies.push((f.request_id, code));
        }
    }
    assert_eq!(
        replies,
        vec![
            (1, None),
            (2, Some(ErrorCode::SchemaMismatch)),
            (3, Some(ErrorCode::UnknownView)),
            (4, Some(ErrorCode::BackendUnavailable)),
            (5, Some(ErrorCode::Malformed)),
        ]
    );
    // MALFORMED closes the connection.
    assert_eq!(s.read(&mut chunk).unwrap(), 0);
}
