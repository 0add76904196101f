//! Criterion: the wire codec on a 100-entity GET, both directions (request and reply, encode and
//! decode), with user_features-sized rows (16 x f32 = 64 bytes).
//! `cargo bench --bench codec`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use featureproxy_protocol::{
    decode_frame, encode_get_response, EntityStatus, Limits, Request, Response, Status,
    DEFAULT_MAX_FRAME,
};

const N: usize = 100;
const ROW_BYTES: usize = 64;

fn keys() -> Vec<Vec<u8>> {
    (0..N)
        .map(|i| format!("u:{}", 100_003 * i % 1_000_000).into_bytes())
        .collect()
}

fn request_frame(keys: &[Vec<u8>]) -> BytesMut {
    let mut out = BytesMut::new();
    Request::encode_get(&mut out, 42, 1, 0, 0x1a2b_3c4d, 2000, keys);
    out
}

fn reply_frame(rows: &[Vec<u8>]) -> BytesMut {
    let statuses: Vec<EntityStatus> = (0..N)
        .map(|i| {
            EntityStatus::new(
                if i % 10 == 0 {
                    Status::Missing
                } else {
                    Status::Fresh
                },
                i % 2 == 0,
            )
        })
        .collect();
    let ages: Vec<u32> = (0..N as u32).map(|i| i * 10).collect();
    let mut out = BytesMut::new();
    encode_get_response(
        &mut out,
        42,
        1,
        0x1a2b_3c4d,
        ROW_BYTES as u32,
        &statuses,
        &ages,
        rows.iter().map(|r| r.as_slice()),
    );
    out
}

fn codec(c: &mut Criterion) {
    let keys = keys();
    let rows: Vec<Vec<u8>> = (0..N).map(|i| vec![i as u8; ROW_BYTES]).collect();
    let limits = Limits::default();
    let mut g = c.benchmark_group("codec get x100");
    g.throughput(Throughput::Elements(N as u64));

    let mut out = BytesMut::with_capacity(4096);
    g.bench_function("encode request", |b| {
        b.iter(|| {
            out.clear();
            Request::encode_get(&mut out, 42, 1, 0, 0x1a2b_3c4d, 2000, black_box(&keys));
            black_box(out.len())
        })
    });

    let req = request_frame(&keys);
    g.bench_function("decode request", |b| {
        b.iter(|| {
            let mut buf = req.clone();
            let frame = decode_frame(&mut buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
            match Request::decode(&frame, &limits).unwrap() {
                Request::Get(g) => black_box(g.keys.len()),
                _ => unreachable!(),
            }
        })
    });

    let statuses: Vec<EntityStatus> = (0..N)
        .map(|_| EntityStatus::new(Status::Fresh, true))
        .collect();
    let ages: Vec<u32> = vec![1500; N];
    let mut out = BytesMut::with_capacity(16 * 1024);
    g.bench_function("encode reply", |b| {
        b.iter(|| {
            out.clear();
            encode_get_response(
                &mut out,
                42,
                1,
                0x1a2b_3c4d,
                ROW_BYTES as u32,
                black_box(&statuses),
                &ages,
                rows.iter().map(|r| r.as_slice()),
            );
            black_box(out.len())
        })
    });

    let reply = reply_frame(&rows);
    g.bench_function("decode reply", |b| {
        b.iter(|| {
            let mut buf = reply.clone();
            let frame = decode_frame(&mut buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
            match Response::decode(&frame, &limits).unwrap() {
                Response::Get(g) => black_box(g.matrix().len()),
                _ => unreachable!(),
            }
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
