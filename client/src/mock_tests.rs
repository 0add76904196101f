//! Tests of the connection machinery against a small in-process mock server (no Redis, no proxy
//! binary): multiplexing with out-of-order replies, timeouts, reconnects, schema refresh, limits.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use featureproxy_protocol::{
    decode_frame, encode_frame, encode_get_response, Dtype, EntityStatus, ErrorCode, HelloReply,
    Limits, ProtocolError, PutEntry, Request, Response, SchemaReply, Status,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinSet;

use crate::schema::tests::spec;
use crate::{Client, ClientOptions, Error, GetOptions, Value};

const MAX_BATCH: u32 = 8;

#[derive(Default)]
pub(crate) struct MockState {
    token: Option<String>,
    hellos: AtomicUsize,
    schema_requests: AtomicUsize,
    gets: AtomicUsize,
    schema_id: AtomicU32,
    last_flags: AtomicU32,
    last_deadline: AtomicU32,
    puts: AtomicUsize,
    /// Keys "shed-once..." already answered OVERLOADED once.
    shed_once: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
    /// While set, connections read nothing more (their sockets fill up); `resumed` wakes them.
    paused: std::sync::atomic::AtomicBool,
    resumed: tokio::sync::Notify,
}

impl MockState {
    /// A fresh mock's state: view "emb" at schema id 100, and `token` required if given.
    pub(crate) fn new(token: Option<&str>) -> MockState {
        MockState {
            token: token.map(str::to_string),
            schema_id: AtomicU32::new(100),
            ..Default::default()
        }
    }

    /// HELLOs answered (or refused) so far.
    pub(crate) fn hellos(&self) -> usize {
        self.hellos.load(Ordering::SeqCst)
    }

    fn pause_reads(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    fn resume_reads(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.resumed.notify_waiters();
    }

    async fn wait_while_paused(&self) {
        loop {
            // Made before the check, so a resume between the two is not missed.
            let resumed = self.resumed.notified();
            if !self.paused.load(Ordering::SeqCst) {
                return;
            }
            resumed.await;
        }
    }
}

struct Mock {
    addr: SocketAddr,
    state: Arc<MockState>,
}

impl Mock {
    async fn start(token: Option<&str>) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(MockState::new(token));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, st.clone()));
            }
        });
        Mock { addr, state }
    }

    fn opts(&self) -> ClientOptions {
        ClientOptions {
            timeout: Duration::from_millis(500),
            ..Default::default()
        }
    }
}

/// View "emb": two f32 features. Row of key k: [sum of k's bytes, k.len()].
fn emb_schema(schema_id: u32) -> SchemaReply {
    SchemaReply {
        view_id: 1,
        schema_id,
        row_bytes: 8,
        stale_after_ms: 1000,
        max_staleness_ms: 5000,
        features: vec![
            spec(Dtype::F32, "sum", Value::F32(-1.0)),
            spec(Dtype::F32, "len", Value::F32(-1.0)),
        ],
    }
}

/// The limits the scripted servers read requests with.
const SERVER_LIMITS: Limits = Limits {
    max_frame: 1 << 20,
    max_batch: MAX_BATCH,
};

fn row_of(key: &[u8]) -> Vec<u8> {
    let sum: u32 = key.iter().map(|b| *b as u32).sum();
    let mut r = (sum as f32).to_le_bytes().to_vec();
    r.extend_from_slice(&(key.len() as f32).to_le_bytes());
    r
}

/// A GET reply of view 1 under `schema_id`: every key FRESH, key i aged i ms, its row
/// [`row_of`] (8 bytes).
fn fresh_reply(out: &mut BytesMut, id: u32, schema_id: u32, keys: &featureproxy_protocol::Keys) {
    let n = keys.len();
    let statuses: Vec<EntityStatus> = (0..n)
        .map(|_| EntityStatus::new(Status::Fresh, false))
        .collect();
    let ages: Vec<u32> = (0..n as u32).collect();
    let rows: Vec<Vec<u8>> = keys.iter().map(row_of).collect();
    encode_get_response(
        out,
        id,
        1,
        schema_id,
        8,
        &statuses,
        &ages,
        rows.iter().map(|r| r.as_slice()),
    );
}

pub(crate) fn expect_row(key: &str) -> Vec<Value> {
    let sum: u32 = key.bytes().map(|b| b as u32).sum();
    vec![Value::F32(sum as f32), Value::F32(key.len() as f32)]
}

/// The proxy's answer to a principal without the grant for `op` on `view`.
fn forbidden(op: &str, view: &str) -> Response {
    Response::Error(ProtocolError::new(
        ErrorCode::Forbidden,
        format!("{op} of view {view}: not allowed for this principal"),
    ))
}

async fn send<W: AsyncWrite + Unpin>(w: &AsyncMutex<W>, out: BytesMut) {
    let mut w = w.lock().await;
    if w.write_all(&out).await.is_ok() {
        let _ = w.flush().await;
    }
}

/// Serves one connection, plaintext or TLS (tls_tests runs it behind a TLS acceptor).
pub(crate) async fn serve<S>(sock: S, st: Arc<MockState>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(sock);
    let wr = Arc::new(AsyncMutex::new(wr));
    let limits = SERVER_LIMITS;
    let mut buf = BytesMut::new();
    loop {
        let frame = loop {
            match decode_frame(&mut buf, limits.max_frame) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(_) => return,
            }
            st.wait_while_paused().await;
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let id = frame.request_id;
        let req = match Request::decode(&frame, &limits) {
            Ok(r) => r,
            Err(e) => {
                let mut out = BytesMut::new();
                Response::Error(e).encode(&mut out, id);
                send(&wr, out).await;
                continue;
            }
        };
        let mut out = BytesMut::new();
        let current = st.schema_id.load(Ordering::SeqCst);
        match req {
            Request::Hello(h) => {
                st.hellos.fetch_add(1, Ordering::SeqCst);
                if st.token.as_deref().is_some_and(|t| t != h.token) {
                    Response::Error(ProtocolError::new(ErrorCode::Unauthorized, "bad token"))
                        .encode(&mut out, id);
                    send(&wr, out).await;
                    return;
                }
                Response::Hello(HelloReply {
                    version: 1,
                    shard: 0,
                    max_frame: limits.max_frame,
                    max_batch: limits.max_batch,
                    server: "mock".into(),
                })
                .encode(&mut out, id);
            }
            Request::Ping => Response::Pong.encode(&mut out, id),
            Request::Schema { view } => {
                st.schema_requests.fetch_add(1, Ordering::SeqCst);
                if view == "emb" {
                    Response::Schema(emb_schema(current)).encode(&mut out, id);
                } else if view == "secret" {
                    forbidden("SCHEMA", &view).encode(&mut out, id);
                } else {
                    Response::Error(ProtocolError::new(
                        ErrorCode::UnknownView,
                        format!("no view {view}"),
                    ))
                    .encode(&mut out, id);
                }
            }
            Request::Get(g) => {
                st.gets.fetch_add(1, Ordering::SeqCst);
                st.last_flags.store(g.flags as u32, Ordering::SeqCst);
                st.last_deadline.store(g.deadline_us, Ordering::SeqCst);
                if g.schema_id != current {
                    Response::Error(ProtocolError::new(ErrorCode::SchemaMismatch, "changed"))
                        .encode(&mut out, id);
                    send(&wr, out).await;
                    continue;
                }
                let first = g.keys.iter().next().map(|k| k.to_vec()).unwrap_or_default();
                if first == b"never" {
                    continue;
                }
                // "shed": always OVERLOADED; "shed-once...": OVERLOADED the first time only.
                let shed = first == b"shed"
                    || (first.starts_with(b"shed-once")
                        && st.shed_once.lock().unwrap().insert(first.clone()));
                if shed {
                    Response::Error(ProtocolError::new(ErrorCode::Overloaded, "shed"))
                        .encode(&mut out, id);
                    send(&wr, out).await;
                    continue;
                }
                if first == b"forbidden" {
                    forbidden("GET", "emb").encode(&mut out, id);
                    send(&wr, out).await;
                    continue;
                }
                if first == b"code15" {
                    // An ERROR code past those protocol v1 defines (a newer server's).
                    let mut body = 15u16.to_le_bytes().to_vec();
                    body.extend_from_slice(&4u16.to_le_bytes());
                    body.extend_from_slice(b"new!");
                    encode_frame(&mut out, 0xFF, id, &body); // 0xFF: ERROR
                    send(&wr, out).await;
                    continue;
                }
                if first == b"pong" {
                    // A well-framed reply of the wrong kind.
                    Response::Pong.encode(&mut out, id);
                    send(&wr, out).await;
                    continue;
                }
                if first == b"drop" {
                    // Other tasks still hold the write half: shut it down to close for real.
                    let _ = wr.lock().await.shutdown().await;
                    return;
                }
                let delay = std::str::from_utf8(&first)
                    .ok()
                    .and_then(|s| s.strip_prefix("sleep"))
                    .and_then(|s| s.split(':').next())
                    .and_then(|s| s.parse::<u64>().ok());
                fresh_reply(&mut out, id, current, &g.keys);
                let wr = wr.clone();
                tokio::spawn(async move {
                    if let Some(ms) = delay {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    send(&wr, out).await;
                });
                continue;
            }
            Request::Put(p) => {
                st.puts.fetch_add(1, Ordering::SeqCst);
                let has_key = |k: &str| {
                    p.entries("emb", 8)
                        .is_ok_and(|e| e.iter().any(|e| e.key == k))
                };
                if has_key("shed") {
                    Response::Error(ProtocolError::new(ErrorCode::Overloaded, "shed"))
                        .encode(&mut out, id);
                } else if has_key("forbidden") {
                    forbidden("PUT", "emb").encode(&mut out, id);
                } else if p.schema_id != current {
                    Response::Error(ProtocolError::new(ErrorCode::SchemaMismatch, "changed"))
                        .encode(&mut out, id);
                } else {
                    match p.entries("emb", 8) {
                        Ok(e) => Response::Put {
                            written: e.len() as u32,
                        }
                        .encode(&mut out, id),
                        Err(e) => Response::Error(e).encode(&mut out, id),
                    }
                }
            }
        }
        send(&wr, out).await;
    }
}

#[tokio::test]
async fn connect_opens_the_pool_with_hello() {
    let mock = Mock::start(None).await;
    let client = Client::connect(
        mock.addr,
        ClientOptions {
            pool_size: 3,
            ..mock.opts()
        },
    )
    .await
    .unwrap();
    assert_eq!(mock.state.hellos.load(Ordering::SeqCst), 3);
    assert_eq!(client.pool_size(), 3);
    let hello = client.hello_info().await.unwrap();
    assert_eq!(hello.max_batch, MAX_BATCH);
    assert_eq!(hello.server, "mock");
    assert!(client.ping().await.unwrap() < Duration::from_secs(1));
}

#[tokio::test]
async fn get_decodes_rows_and_caches_the_schema() {
    let mock = Mock::start(None).await;
    let client = Client::connect(mock.addr, mock.opts()).await.unwrap();
    let b = client.get("emb", &["abc", "z"]).await.unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b.row(0), expect_row("abc"));
    assert_eq!(b.value(1, "len"), Some(Value::F32(1.0)));
    assert_eq!(b.status(1).status, Status::Fresh);
    assert_eq!(b.age(1), Some(Duration::from_millis(1)));
    assert_eq!(
        b.as_f32_matrix().unwrap(),
        &[294.0, 3.0, b'z' as f32, 1.0][..]
    );
    client.get("emb", &["abc"]).await.unwrap();
    assert_eq!(mock.state.schema_requests.load(Ordering::SeqCst), 1);
    let s = client.schema("emb").await.unwrap();
    assert_eq!(s.schema_id(), 100);
    assert_eq!(mock.state.schema_requests.load(Ordering::SeqCst), 1);

    client
        .get_with(
            "emb",
            &[b"k".to_vec()],
            GetOptions {
                bypass_cache: true,
                deadline: Some(Duration::from_millis(5)),
            },
        )
        .await
        .unwrap();
    assert_eq!(mock.state.last_flags.load(Ordering::SeqCst), 1);
    assert_eq!(mock.state.last_deadline.load(Ordering::SeqCst), 5000);

    let err = client.get("nope", &["k"]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownView), "{err}");
}

/// Many requests in flight on few connections, replies deliberately out of order: every caller
/// gets its own rows.
async fn concurrent_gets(client: Client) {
    let mut set = JoinSet::new();
    for i in 0..200u64 {
        let c = client.clone();
        set.spawn(async move {
            let first = format!("sleep{}:{i}", (i * 7) % 23);
            let keys = vec![
                first.clone(),
                format!("key-{i}"),
                "x".repeat(i as usize % 5 + 1),
            ];
            let b = c.get("emb", &keys).await.unwrap();
            for (j, k) in keys.iter().enumerate() {
                assert_eq!(b.row(j), expect_row(k), "request {i} key {k}");
            }
            let m = b.as_f32_matrix().expect("rows are aligned");
            assert_eq!(m.len(), 6);
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    for conn in client.conns().await.unwrap() {
        assert_eq!(conn.waiting(), 0);
    }
}

#[tokio::test]
async fn multiplexed_out_of_order_current_thread() {
    let mock = Mock::start(None).await;
    let client = Client::connect(mock.addr, mock.opts()).await.unwrap();
    concurrent_gets(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multiplexed_out_of_order_multi_thread() {
    let mock = Mock::start(None).await;
    let client = Client::connect(
        mock.addr,
        ClientOptions {
            pool_size: 3,
            ..mock.opts()
        },
    )
    .await
    .unwrap();
    concurrent_gets(client).await;
}

#[tokio::test]
async fn timeout_removes_the_waiter() {
    let mock = Mock::start(None).await;
    let client = Client::connect(
        mock.addr,
        ClientOptions {
            timeout: Duration::from_millis(100),
            pool_size: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let err = client.get("emb", &["never"]).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { after, .. } if after == Duration::from_millis(100)));
    assert!(err.is_retryable());
    assert_eq!(client.conns().await.unwrap()[0].waiting(), 0);
    // A late reply must not reach the next caller: "sleep300" answers after its caller gave up.
    let err = client.get("emb", &["sleep300"]).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let b = client.get("emb", &["abc"]).await.unwrap();
    assert_eq!(b.row(0), expect_row("abc"));
    assert_eq!(client.conns().await.unwrap()[0].waiting(), 0);
}

/// A timeout too large to add to the clock means none: the calls work, and one that is never
/// answered is not given up by the client, even after 40 years of (paused) clock; with the
/// 30-year timer this used to arm, it would have failed with `Error::Timeout` first.
#[tokio::test(start_paused = true)]
async fn a_timeout_beyond_the_clock_arms_no_timer() {
    let mock = Mock::start(None).await;
    let opts = ClientOptions {
        timeout: Duration::MAX,
        pool_size: 1,
        ..Default::default()
    };
    let client = Client::connect(mock.addr, opts).await.unwrap();
    let b = client.get("emb", &["abc", "de"]).await.unwrap();
    assert_eq!((b.row(0), b.row(1)), (expect_row("abc"), expect_row("de")));
    let forty_years = Duration::from_secs(40 * 365 * 86_400);
    let never = tokio::time::timeout(forty_years, client.get("emb", &["never"])).await;
    assert!(never.is_err(), "the client gave up by itself: {never:?}");
    assert_eq!(client.conns().await.unwrap()[0].waiting(), 0);
    client.ping().await.unwrap();
}

#[tokio::test]
async fn dropped_connection_fails_in_flight_and_reconnects() {
    let mock = Mock::start(None).await;
    let client = Client::connect(
        mock.addr,
        ClientOptions {
            pool_size: 1,
            ..mock.opts()
        },
    )
    .await
    .unwrap();
    client.get("emb", &["a"]).await.unwrap();
    // One request waits for a slow reply while another makes the server drop the connection.
    let c = client.clone();
    let slow = tokio::spawn(async move { c.get("emb", &["sleep200"]).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A reply arrives after the slow GET was sent: for all the client knows it could have been
    // the start of the slow GET's, so that one is not sent again when the connection drops.
    client.ping().await.unwrap();
    let err = client.get("emb", &["drop"]).await.unwrap_err();
    assert!(
        matches!(&err, Error::ConnectionClosed { addr, .. } if *addr == mock.addr.to_string()),
        "{err}"
    );
    let slow = slow.await.unwrap().unwrap_err();
    assert!(matches!(slow, Error::ConnectionClosed { .. }), "{slow}");
    // "drop" had no reply begun after it was sent: it was sent once more, on a new connection,
    // which the server dropped as well; the slow GET was sent once.
    assert_eq!(mock.state.hellos.load(Ordering::SeqCst), 2);
    assert_eq!(gets(&mock), 4);
    // The next call reconnects, with a new HELLO.
    let b = client.get("emb", &["abc"]).await.unwrap();
    assert_eq!(b.row(0), expect_row("abc"));
    assert_eq!(mock.state.hellos.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_closed_connection_is_reopened_before_sending() {
    let mock = Mock::start(None).await;
    let client = Client::connect(
        mock.addr,
        ClientOptions {
            pool_size: 1,
            ..mock.opts()
        },
    )
    .await
    .unwrap();
    client.conns().await.unwrap()[0].close("closed by test");
    client.ping().await.unwrap();
    assert_eq!(mock.state.hellos.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn schema_mismatch_refetches_and_retries_once() {
    let mock = Mock::start(None).await;
    let client = Client::connect(mock.addr, mock.opts()).await.unwrap();
    client.get("emb", &["a"]).await.unwrap();
    mock.state.schema_id.store(101, Ordering::SeqCst);
    let b = client.get("emb", &["a"]).await.unwrap();
    assert_eq!(b.schema().schema_id(), 101);
    assert_eq!(client.cached_schema("emb").unwrap().schema_id(), 101);
    assert_eq!(mock.state.schema_requests.load(Ordering::SeqCst), 2);

    mock.state.schema_id.store(102, Ordering::SeqCst);
    let now = std::time::SystemTime::now();
    let written = client
        .put("emb", &[("a", now, [Value::F32(1.0), Value::F32(2.0)])])
        .await
        .unwrap();
    assert_eq!(written, 1);
    assert_eq!(client.cached_schema("emb").unwrap().schema_id(), 102);
}

#[tokio::test]
async fn limits_are_checked_before_sending() {
    let mock = Mock::start(None).await;
    let client = Client::connect(mock.addr, mock.opts()).await.unwrap();
    client.schema("emb").await.unwrap();
    let keys: Vec<String> = (0..=MAX_BATCH).map(|i| format!("k{i}")).collect();
    let err = client.get("emb", &keys).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::BatchTooLarge {
                n: 9,
                max_batch: MAX_BATCH
            }
        ),
        "{err}"
    );
    assert_eq!(err.code(), Some(ErrorCode::BatchTooLarge));
    let err = client.get("emb", &["ok", ""]).await.unwrap_err();
    assert!(matches!(err, Error::BadKey { index: 1, len: 0 }), "{err}");
    let long = vec![b'k'; 1025];
    let err = client.get("emb", &[long]).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::BadKey {
                index: 0,
                len: 1025
            }
        ),
        "{err}"
    );
    assert_eq!(mock.state.gets.load(Ordering::SeqCst), 0);
    // The connection is still fine.
    client.get("emb", &["a"]).await.unwrap();
}

#[tokio::test]
async fn put_typed_and_raw() {
    let mock = Mock::start(None).await;
    let client = Client::connect(mock.addr, mock.opts()).await.unwrap();
    let rows = [
        (
            "a",
            1_700_000_000_000u64,
            vec![Value::F32(1.0), Value::F32(2.0)],
        ),
        (
            "b",
            1_700_000_000_001u64,
            vec![Value::F32(3.0), Value::F32(4.0)],
        ),
    ];
    assert_eq!(client.put("emb", &rows).await.unwrap(), 2);

    let err = client
        .put("emb", &[("a", 0u64, [Value::F64(1.0), Value::F32(2.0)])])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::BadRow(m) if m.contains("row 0") && m.contains("sum")),
        "{err}"
    );

    let schema = client.schema("emb").await.unwrap();
    let entry = PutEntry {
        key: "c".into(),
        computed_at_ms: 5,
        row: schema.encode_row(&[1.0f32.into(), 2.0f32.into()]).unwrap(),
    };
    assert_eq!(
        client
            .put_raw("emb", std::slice::from_ref(&entry))
            .await
            .unwrap(),
        1
    );
    let bad = PutEntry {
        row: entry.row.slice(..4),
        ..entry
    };
    let err = client.put_raw("emb", &[bad]).await.unwrap_err();
    assert!(
        matches!(&err, Error::BadRow(m) if m.contains("4 bytes")),
        "{err}"
    );
}

#[tokio::test]
async fn hello_errors_and_connect_errors_are_clear() {
    let mock = Mock::start(Some("secret")).await;
    let err = Client::connect(
        mock.addr,
        ClientOptions {
            token: Some("wrong".into()),
            ..mock.opts()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
    Client::connect(
        mock.addr,
        ClientOptions {
            token: Some("secret".into()),
            ..mock.opts()
        },
    )
    .await
    .unwrap();

    // A port nobody listens on.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let err = Client::connect(addr, ClientOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Connect { addr: a, .. } if *a == addr.to_string()),
        "{err}"
    );
    assert!(err.to_string().contains(&addr.to_string()));
}

#[test]
fn options_debug_hides_the_token() {
    let o = ClientOptions {
        token: Some("hunter2".into()),
        ..Default::default()
    };
    let s = format!("{o:?}");
    assert!(!s.contains("hunter2") && s.contains("redacted"), "{s}");
    assert_eq!(o.timeout, Duration::from_secs(2));
    assert_eq!(o.pool_size, 2);
    assert!(o.retry_overloaded);
    assert_eq!(o.overload_backoff, Duration::from_millis(20));
}

#[tokio::test]
async fn an_undecodable_reply_closes_the_connection() {
    let mock = Mock::start(None).await;
    let client = Client::connect(
        mock.addr,
        ClientOptions {
            pool_size: 1,
            ..mock.opts()
        },
    )
    .await
    .unwrap();
    let err = client.get("emb", &["pong"]).await.unwrap_err();
    assert!(
        matches!(&err, Error::Protocol(p) if p.message.contains("PONG") || p.message.contains("PING")),
        "{err}"
    );
    assert_eq!(mock.state.hellos.load(Ordering::SeqCst), 1);
    client.get("emb", &["a"]).await.unwrap();
    assert_eq!(mock.state.hellos.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_reply_above_max_frame_is_refused_before_sending() {
    let mock = Mock::start(None).await;
    let client = Client::connect(mock.addr, mock.opts()).await.unwrap();
    // 8 keys of 1024 bytes fit the mock's 1 MiB max_frame; the check is on the frame sizes, so
    // exercise it through the helper directly with a tiny limit.
    let limits = Limits {
        max_frame: 40,
        max_batch: 8,
    };
    let err = crate::client::check_frame("reply", 60, &limits).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BatchTooLarge));
    let err = crate::client::check_frame("request", 60, &limits).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FrameTooLarge));
    assert!(crate::client::check_frame("request", 40, &limits).is_ok());
    client.get("emb", &vec![vec![b'k'; 1024]; 8]).await.unwrap();
}

fn gets(mock: &Mock) -> usize {
    mock.state.gets.load(Ordering::SeqCst)
}

#[tokio::test]
async fn a_shed_get_is_retried_once_on_the_next_connection() {
    let mock = Mock::start(None).await;
    let client = Client::connect(mock.addr, mock.opts()).await.unwrap();
    let b = client.get("emb", &["shed-once-a", "x"]).await.unwrap();
    assert_eq!(b.row(0), expect_row("shed-once-a"));
    assert_eq!(gets(&mock), 2);
    assert_eq!(
        (client.overload_retries(), client.overload_retries_refused()),
        (1, 0)
    );
    // A GET shed again on its retry returns OVERLOADED: one retry, never two.
    let started = std::time::Instant::now();
    let err = client.get("emb", &["shed"]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Overloaded), "{err}");
    assert_eq!(gets(&mock), 4);
    assert_eq!(client.overload_retries(), 2);
    // The pause was at least half the default backoff of 20 ms.
    assert!(started.elapsed() >= Duration::from_millis(10));
}

#[tokio::test]
async fn no_overload_retry_when_off_or_past_the_timeout_nor_for_puts() {
    let mock = Mock::start(None).await;
    let off = Client::connect(
        mock.addr,
        ClientOptions {
            retry_overloaded: false,
            ..mock.opts()
        },
    )
    .await
    .unwrap();
    let err = off.get("emb", &["shed-once-b"]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Overloaded), "{err}");
    assert_eq!(gets(&mock), 1);
    assert_eq!(
        (off.overload_retries(), off.overload_retries_refused()),
        (0, 0)
    );

    // A pause of 100-200 ms cannot end within a 50 ms timeout: OVERLOADED at once.
    let short = Client::connect(
        mock.addr,
        ClientOptions {
            timeout: Duration::from_millis(50),
            overload_backoff: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    short.schema("emb").await.unwrap();
    let started = std::time::Instant::now();
    let err = short.get("emb", &["shed"]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Overloaded), "{err}");
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(gets(&mock), 2);
    assert_eq!(
        (short.overload_retries(), short.overload_retries_refused()),
        (0, 0)
    );

    // PUT: never retried.
    let client = Client::connect(mock.addr, mock.opts()).await.unwrap();
    let err = client
        .put("emb", &[("shed", 1u64, [Value::F32(1.0), Value::F32(2.0)])])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Overloaded), "{err}");
    assert_eq!(mock.state.puts.load(Ordering::SeqCst), 1);
    assert_eq!(client.overload_retries(), 0);
}

/// 30 GETs in a row, each shed twice: the budget allows the floor of 10 retries plus one per 10
/// GETs sent (within the same second), and counts the rest as refused.
#[tokio::test]
async fn the_retry_budget_refuses_past_its_tokens() {
    let mock = Mock::start(None).await;
    let client = Client::connect(
        mock.addr,
        ClientOptions {
            overload_backoff: Duration::ZERO,
            ..mock.opts()
        },
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    for _ in 0..30 {
        let err = client.get("emb", &["shed"]).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Overloaded), "{err}");
    }
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the GETs must fall in one window of the budget"
    );
    // After GET k (k = 1..30), k/10 + 10 tokens were earned: retries 1-11 at GETs 1-11, the
    // 12th at GET 20 and the 13th at GET 30.
    assert_eq!(client.overload_retries(), 13);
    assert_eq!(client.overload_retries_refused(), 17);
    assert_eq!(gets(&mock), 30 + 13);
}

/// FORBIDDEN (a valid token whose principal lacks the grant) is reported with the server's message
/// and what to do about it, is not retried, and leaves the connection open: the calls around it
/// on the same connection are served, with no new HELLO.
#[tokio::test]
async fn a_forbidden_get_put_or_schema_keeps_the_connection() {
    let mock = Mock::start(None).await;
    let client = Client::connect(
        mock.addr,
        ClientOptions {
            pool_size: 1,
            ..mock.opts()
        },
    )
    .await
    .unwrap();
    client.get("emb", &["a"]).await.unwrap();

    let err = client.get("emb", &["forbidden", "b"]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    assert!(
        matches!(&err, Error::Server { code: ErrorCode::Forbidden, message }
            if message == "GET of view emb: not allowed for this principal"),
        "{err:?}"
    );
    let shown = err.to_string();
    assert!(
        shown.starts_with("featureproxy refused the request: FORBIDDEN: GET of view emb:"),
        "{shown}"
    );
    assert!(
        shown.contains("its principal may not do this") && shown.contains("access file"),
        "{shown}"
    );
    assert!(!err.is_retryable());
    assert_eq!(gets(&mock), 2, "a FORBIDDEN GET is not sent again");
    // The same connection serves the next GET, and the schema stays cached.
    let b = client.get("emb", &["abc"]).await.unwrap();
    assert_eq!(b.row(0), expect_row("abc"));

    let err = client
        .put(
            "emb",
            &[("forbidden", 1u64, [Value::F32(1.0), Value::F32(2.0)])],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    assert!(err.to_string().contains("PUT of view emb"), "{err}");
    assert_eq!(mock.state.puts.load(Ordering::SeqCst), 1);

    let err = client.get("secret", &["a"]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden), "{err}");
    assert!(err.to_string().contains("SCHEMA of view secret"), "{err}");
    assert!(client.cached_schema("secret").is_none());

    client.ping().await.unwrap();
    assert_eq!(
        client.get("emb", &["z"]).await.unwrap().row(0),
        expect_row("z")
    );
    assert_eq!(mock.state.hellos.load(Ordering::SeqCst), 1, "no reconnect");
    assert_eq!(mock.state.schema_requests.load(Ordering::SeqCst), 2);
}

/// An ERROR code this client does not know (a newer server's) stays MALFORMED: a clear protocol
/// error naming the code and the server's message, after which the connection is reopened.
#[tokio::test]
async fn an_unknown_error_code_is_malformed_and_names_the_code() {
    let mock = Mock::start(None).await;
    let client = Client::connect(
        mock.addr,
        ClientOptions {
            pool_size: 1,
            ..mock.opts()
        },
    )
    .await
    .unwrap();
    let err = client.get("emb", &["code15"]).await.unwrap_err();
    assert!(
        matches!(&err, Error::Protocol(p) if p.code == ErrorCode::Malformed
            && p.message.contains("code 15") && p.message.contains("new!")),
        "{err:?}"
    );
    assert_eq!(err.code(), None);
    client.get("emb", &["a"]).await.unwrap();
    assert_eq!(mock.state.hellos.load(Ordering::SeqCst), 2);
}

/// A flood of large GETs while the server reads nothing: the socket fills up, so callers' frames
/// are written in part by the callers themselves and handed on to the writer task, queued behind
/// it, or wait for room in its queue; and every caller gives up mid-call (its future dropped by a
/// timeout). When the server reads again, what it gets must be whole frames only (it closes the
/// connection at the first it cannot decode): the connection is still the first one, and it
/// answers the next GET.
async fn cancelled_callers_never_leave_half_a_frame() {
    let mock = Mock::start(None).await;
    let opts = ClientOptions {
        timeout: Duration::from_secs(10),
        pool_size: 1,
        ..Default::default()
    };
    let client = Client::connect(mock.addr, opts).await.unwrap();
    client.schema("emb").await.unwrap();
    mock.state.pause_reads();
    // Each GET is a frame of about 8 KiB; 3,000 of them are far more than socket buffers and
    // the writer's queue (1,024 frames) hold.
    let keys: Vec<Vec<u8>> = (0..MAX_BATCH)
        .map(|i| vec![b'a' + i as u8; featureproxy_protocol::MAX_KEY_LEN])
        .collect();
    let callers = 3000;
    let mut set = JoinSet::new();
    for _ in 0..callers {
        let (c, keys) = (client.clone(), keys.clone());
        set.spawn(async move {
            tokio::time::timeout(Duration::from_millis(300), c.get("emb", &keys))
                .await
                .is_err()
        });
    }
    let mut gave_up = 0;
    while let Some(r) = set.join_next().await {
        gave_up += usize::from(r.unwrap());
    }
    assert_eq!(
        gave_up, callers,
        "the server read nothing, so nobody had an answer"
    );
    mock.state.resume_reads();
    let b = client.get("emb", &["after"]).await.unwrap();
    assert_eq!(b.row(0), expect_row("after"));
    assert_eq!(mock.state.hellos(), 1, "the connection was never broken");
    let sent = gets(&mock) - 1;
    // Whatever had left or been queued went out whole; callers that gave up while waiting for
    // room in the queue sent nothing.
    assert!(sent >= 1024 && sent < callers, "{sent} GETs arrived");
    assert_eq!(client.conns().await.unwrap()[0].waiting(), 0);
}

#[tokio::test]
async fn cancelled_callers_never_leave_half_a_frame_current_thread() {
    cancelled_callers_never_leave_half_a_frame().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_callers_never_leave_half_a_frame_multi_thread() {
    cancelled_callers_never_leave_half_a_frame().await;
}

// ---- a server that closes a connection under a request

/// What [`ThreadServer`] received: the connection (numbered from 1), the request ("HELLO",
/// "SCHEMA emb", "GET <first key>", "PUT <first key>", "PING") and whether it came after the
/// server's FIN on that connection.
type Seen = (usize, String, bool);

/// A scripted server on threads of its own (blocking sockets, no tokio), answering as [`serve`]
/// does (view "emb" at schema id 100). Closing a connection ([`ThreadServer::fin_first`]) then
/// runs nothing on the test's runtime: on a current-thread runtime the client's reader task
/// cannot notice the FIN before the test's next call has written its request on the closed
/// connection, which is the race of a request sent as the server closes an idle connection,
/// made deterministic. After its FIN, connection 1 goes on reading (its write half alone is shut
/// down) and records what still arrives. A GET whose first key is "half", on connection 1, is
/// answered with the first half of its reply frame, then FIN.
struct ThreadServer {
    addr: SocketAddr,
    shared: Arc<ThreadShared>,
}

#[derive(Default)]
struct ThreadShared {
    accepted: AtomicUsize,
    seen: std::sync::Mutex<Vec<Seen>>,
    /// Connection 1's socket, for [`ThreadServer::fin_first`].
    first: std::sync::Mutex<Option<std::net::TcpStream>>,
    /// Connection 1 sent its FIN.
    fin: AtomicBool,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl ThreadServer {
    fn start() -> ThreadServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(ThreadShared::default());
        let sh = shared.clone();
        // Blocked in accept until the test binary exits.
        std::thread::spawn(move || {
            for sock in listener.incoming() {
                let Ok(sock) = sock else { return };
                let n = sh.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 1 {
                    *sh.first.lock().unwrap() = Some(sock.try_clone().unwrap());
                }
                let conn = sh.clone();
                let t = std::thread::spawn(move || serve_blocking(sock, n, &conn));
                sh.threads.lock().unwrap().push(t);
            }
        });
        ThreadServer { addr, shared }
    }

    fn opts(&self) -> ClientOptions {
        ClientOptions {
            timeout: Duration::from_secs(5),
            pool_size: 1,
            ..Default::default()
        }
    }

    fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Sends FIN on connection 1 (its write half shut down; it goes on reading), and returns
    /// when it has gone out, without running anything on the caller's runtime.
    fn fin_first(&self) {
        self.shared.fin.store(true, Ordering::SeqCst);
        let first = self.shared.first.lock().unwrap();
        let first = first.as_ref().expect("connection 1 is open");
        first.shutdown(std::net::Shutdown::Write).unwrap();
    }

    /// Everything received, per connection, once every connection has ended: drop the client
    /// first. Waits off the runtime, so the client's tasks can close their sockets meanwhile.
    async fn seen(&self) -> Vec<Vec<(String, bool)>> {
        let sh = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let threads = std::mem::take(&mut *sh.threads.lock().unwrap());
            for t in threads {
                t.join().unwrap();
            }
        })
        .await
        .unwrap();
        let seen = self.shared.seen.lock().unwrap();
        (1..=self.accepted())
            .map(|n| {
                seen.iter()
                    .filter(|s| s.0 == n)
                    .map(|s| (s.1.clone(), s.2))
                    .collect()
            })
            .collect()
    }
}

/// One connection of [`ThreadServer`], numbered `n` from 1.
fn serve_blocking(mut sock: std::net::TcpStream, n: usize, sh: &ThreadShared) {
    use std::io::{Read, Write};
    let limits = SERVER_LIMITS;
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        let frame = loop {
            match decode_frame(&mut buf, limits.max_frame) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(_) => return,
            }
            match sock.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        let id = frame.request_id;
        let req = Request::decode(&frame, &limits).unwrap();
        let key = |k: Option<&[u8]>| String::from_utf8_lossy(k.unwrap_or_default()).into_owned();
        let name = match &req {
            Request::Hello(_) => "HELLO".to_string(),
            Request::Ping => "PING".to_string(),
            Request::Schema { view } => format!("SCHEMA {view}"),
            Request::Get(g) => format!("GET {}", key(g.keys.iter().next())),
            Request::Put(p) => {
                let entries = p.entries("emb", 8).unwrap();
                format!("PUT {}", key(entries.first().map(|e| &e.key[..])))
            }
        };
        let after_fin = n == 1 && sh.fin.load(Ordering::SeqCst);
        sh.seen.lock().unwrap().push((n, name.clone(), after_fin));
        if after_fin {
            continue; // its write half is shut: nothing more is answered
        }
        let mut out = BytesMut::new();
        match req {
            Request::Hello(_) => Response::Hello(HelloReply {
                version: 1,
                shard: 0,
                max_frame: limits.max_frame,
                max_batch: limits.max_batch,
                server: "threads".into(),
            })
            .encode(&mut out, id),
            Request::Ping => Response::Pong.encode(&mut out, id),
            Request::Schema { .. } => Response::Schema(emb_schema(100)).encode(&mut out, id),
            Request::Get(g) => {
                fresh_reply(&mut out, id, 100, &g.keys);
            }
            Request::Put(p) => Response::Put {
                written: p.entries("emb", 8).unwrap().len() as u32,
            }
            .encode(&mut out, id),
        }
        if n == 1 && name == "GET half" {
            sh.fin.store(true, Ordering::SeqCst);
            let _ = sock.write_all(&out[..out.len() / 2]);
            let _ = sock.shutdown(std::net::Shutdown::Write);
            continue;
        }
        let _ = sock.write_all(&out);
    }
}

fn seen(entries: &[(&str, bool)]) -> Vec<(String, bool)> {
    entries.iter().map(|(s, f)| (s.to_string(), *f)).collect()
}

/// A GET written on a connection the server had just closed (after answering a GET), before the
/// client read the FIN, is sent once more on a new connection, and answered there.
#[tokio::test]
async fn a_get_the_server_closed_the_connection_under_is_sent_again() {
    let srv = ThreadServer::start();
    let client = Client::connect(srv.addr, srv.opts()).await.unwrap();
    assert_eq!(
        client.get("emb", &["a"]).await.unwrap().row(0),
        expect_row("a")
    );
    srv.fin_first();
    // No pause: the client's reader task has not run since the FIN.
    let b = client.get("emb", &["bb", "c"]).await.unwrap();
    assert_eq!((b.row(0), b.row(1)), (expect_row("bb"), expect_row("c")));
    assert_eq!(srv.accepted(), 2);
    drop(client);
    assert_eq!(
        srv.seen().await,
        [
            // The GET went out on the closed connection first...
            seen(&[
                ("HELLO", false),
                ("SCHEMA emb", false),
                ("GET a", false),
                ("GET bb", true),
            ]),
            // ... then once more on a new one.
            seen(&[("HELLO", false), ("GET bb", false)]),
        ]
    );
}

/// `err` is the ConnectionClosed of a connection the server closed (not sent again).
fn assert_closed_by_the_server(err: &Error) {
    match err {
        Error::ConnectionClosed { reason, .. } => {
            assert_eq!(reason, "the server closed the connection")
        }
        other => panic!("expected ConnectionClosed, got {other:?}"),
    }
}

/// A PUT in the same race is not sent again (the server may have written it before closing):
/// it fails with ConnectionClosed, and the server received it once.
#[tokio::test]
async fn a_put_the_server_closed_the_connection_under_is_not_sent_again() {
    let srv = ThreadServer::start();
    let client = Client::connect(srv.addr, srv.opts()).await.unwrap();
    client.get("emb", &["a"]).await.unwrap();
    srv.fin_first();
    let row = [Value::F32(1.0), Value::F32(2.0)];
    let err = client.put("emb", &[("p", 1u64, row)]).await.unwrap_err();
    assert_closed_by_the_server(&err);
    assert_eq!(srv.accepted(), 1);
    drop(client);
    let seen_all = srv.seen().await;
    assert_eq!(
        seen_all,
        [seen(&[
            ("HELLO", false),
            ("SCHEMA emb", false),
            ("GET a", false),
            ("PUT p", true),
        ])]
    );
}

/// A GET whose reply had begun (half a frame in) when the server closed the connection is not
/// sent again: it fails with ConnectionClosed. (A new connection would answer it in full.)
#[tokio::test]
async fn a_get_whose_reply_had_begun_is_not_sent_again() {
    let srv = ThreadServer::start();
    let client = Client::connect(srv.addr, srv.opts()).await.unwrap();
    client.get("emb", &["a"]).await.unwrap();
    let err = client.get("emb", &["half"]).await.unwrap_err();
    assert_closed_by_the_server(&err);
    assert_eq!(srv.accepted(), 1);
    drop(client);
    assert_eq!(
        srv.seen().await,
        [seen(&[
            ("HELLO", false),
            ("SCHEMA emb", false),
            ("GET a", false),
            ("GET half", false),
        ])]
    );
}
