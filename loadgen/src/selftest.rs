//! In-process echo servers for `loadgen selftest`: they answer featureproxy GETs (and HELLO,
//! SCHEMA) and RESP GET/MGET with canned replies at almost no cost, so a run against them measures
//! loadgen itself.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use featureproxy_protocol::{
    decode_frame, encode_get_response, Dtype, EntityStatus, FeatureSpec, HelloReply, Limits,
    Request, Response, SchemaReply, Status,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const ECHO_FEATURES: usize = 16;

/// Starts both echo servers on a thread of their own; returns (featureproxy addr, RESP addr).
pub fn start_echo() -> Result<(SocketAddr, SocketAddr), String> {
    let fp = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let resp = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addrs = (
        fp.local_addr().map_err(|e| e.to_string())?,
        resp.local_addr().map_err(|e| e.to_string())?,
    );
    fp.set_nonblocking(true).map_err(|e| e.to_string())?;
    resp.set_nonblocking(true).map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("loadgen-echo".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let fp = tokio::net::TcpListener::from_std(fp).expect("listener");
                let resp = tokio::net::TcpListener::from_std(resp).expect("listener");
                loop {
                    tokio::select! {
                        Ok((s, _)) = fp.accept() => { tokio::spawn(serve_fp(s)); }
                        Ok((s, _)) = resp.accept() => { tokio::spawn(serve_resp(s)); }
                    }
                }
            });
        })
        .map_err(|e| e.to_string())?;
    Ok(addrs)
}

fn schema() -> SchemaReply {
    SchemaReply {
        view_id: 1,
        schema_id: 0xec40,
        row_bytes: 4 * ECHO_FEATURES as u32,
        stale_after_ms: 60_000,
        max_staleness_ms: 600_000,
        features: (0..ECHO_FEATURES)
            .map(|j| FeatureSpec {
                dtype: Dtype::F32,
                name: format!("f{j}"),
                default: [0; 8],
            })
            .collect(),
    }
}

async fn serve_fp(mut s: tokio::net::TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut canned: HashMap<u32, BytesMut> = HashMap::new();
    let row = [0u8; 4 * ECHO_FEATURES];
    loop {
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while let Ok(Some(frame)) = decode_frame(&mut buf, 1 << 24) {
            let id = frame.request_id;
            if frame.op == 0x10 && frame.body.len() >= 16 {
                let n = u32::from_le_bytes([
                    frame.body[12],
                    frame.body[13],
                    frame.body[14],
                    frame.body[15],
                ]);
                let reply = canned.entry(n).or_insert_with(|| {
                    let mut b = BytesMut::new();
                    let st = vec![EntityStatus::new(Status::Fresh, true); n as usize];
                    let ages = vec![5u32; n as usize];
                    encode_get_response(
                        &mut b,
                        0,
                        1,
                        0xec40,
                        row.len() as u32,
                        &st,
                        &ages,
                        (0..n).map(|_| &row[..]),
                    );
                    b
                });
                let at = out.len();
                out.extend_from_slice(reply);
                out[at + 8..at + 12].copy_from_slice(&id.to_le_bytes());
                continue;
            }
            let reply = match Request::decode(&frame, &Limits::default()) {
                Ok(Request::Hello(_)) => Response::Hello(HelloReply {
                    version: 1,
                    shard: 0,
                    max_frame: 4 << 20,
                    max_batch: 4096,
                    server: "loadgen-echo".into(),
                }),
                Ok(Request::Schema { .. }) => Response::Schema(schema()),
                _ => Response::Pong,
            };
            reply.encode(&mut out, id);
        }
        if s.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
}

async fn serve_resp(mut s: tokio::net::TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = Vec::with_capacity(64 * 1024);
    let mut value = vec![1u8];
    value.extend_from_slice(&0u64.to_le_bytes());
    value.extend_from_slice(&[0u8; 4 * ECHO_FEATURES]);
    let mut bulk = format!("${}\r\n", value.len()).into_bytes();
    bulk.extend_from_slice(&value);
    bulk.extend_from_slice(b"\r\n");
    loop {
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Commands are arrays of bulk strings: count the arguments, skip them.
        while let Some((used, argc)) = command(&buf) {
            buf.advance(used);
            if argc <= 2 {
                out.extend_from_slice(&bulk);
            } else {
                out.extend_from_slice(format!("*{}\r\n", argc - 1).as_bytes());
                for _ in 1..argc {
                    out.extend_from_slice(&bulk);
                }
            }
        }
        if s.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
}

/// (bytes, argument count) of the complete command at the start of `buf`.
fn command(buf: &[u8]) -> Option<(usize, usize)> {
    let line = |pos: usize| -> Option<(usize, usize)> {
        let rest = buf.get(pos..)?;
        let i = rest.windows(2).position(|w| w == b"\r\n")?;
        let n = std::str::from_utf8(&rest[1..i]).ok()?.parse().ok()?;
        Some((n, pos + i + 2))
    };
    let (argc, mut pos) = line(0)?;
    for _ in 0..argc {
        let (len, p) = line(pos)?;
        pos = p + len + 2;
        if pos > buf.len() {
            return None;
        }
    }
    Some((pos, argc))
}
