//! Property tests of the v1 codec: every message survives encode then decode, no input makes a
//! decoder panic or over-read, and frames split across reads decode the same as whole ones.

use bytes::{Bytes, BytesMut};
use featureproxy_protocol::{
    align8, decode_frame, encode_frame, encode_get_response, get_response_len, Dtype, EntityStatus,
    ErrorCode, FeatureSpec, Frame, GetRequest, Hello, HelloReply, Keys, Limits, Op, ProtocolError,
    PutEntry, PutRequest, Request, Response, SchemaReply, Status, DEFAULT_MAX_FRAME, HEADER_LEN,
    MAX_KEY_LEN,
};
use proptest::collection::vec;
use proptest::prelude::*;

// ---- strategies ---------------------------------------------------------------------------------

fn arb_key() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        8 => vec(any::<u8>(), 1..=24),
        1 => vec(any::<u8>(), MAX_KEY_LEN - 4..=MAX_KEY_LEN),
    ]
    .prop_map(Bytes::from)
}

fn arb_str() -> impl Strategy<Value = String> {
    // Any characters, multi-byte ones included.
    ".{0,24}"
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u16>(), arb_str(), arb_str()).prop_map(|(version, token, client_name)| {
            Request::Hello(Hello {
                version,
                token,
                client_name,
            })
        }),
        Just(Request::Ping),
        arb_str().prop_map(|view| Request::Schema { view }),
        (
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            vec(arb_key(), 0..20)
        )
            .prop_map(|(view_id, flags, schema_id, deadline_us, keys)| {
                Request::Get(GetRequest {
                    view_id,
                    flags,
                    schema_id,
                    deadline_us,
                    keys: Keys::from_slices(&keys),
                })
            }),
        arb_put().prop_map(|(put, _, _)| Request::Put(put)),
    ]
}

/// A PUT, the entries it was built from and their row length.
fn arb_put() -> impl Strategy<Value = (PutRequest, Vec<PutEntry>, usize)> {
    (0usize..40, 0usize..12)
        .prop_flat_map(|(row_bytes, n)| {
            let entry = (arb_key(), any::<u64>(), vec(any::<u8>(), row_bytes)).prop_map(
                |(key, computed_at_ms, row)| PutEntry {
                    key,
                    computed_at_ms,
                    row: Bytes::from(row),
                },
            );
            (any::<u16>(), any::<u32>(), vec(entry, n), Just(row_bytes))
        })
        .prop_map(|(view_id, schema_id, entries, row_bytes)| {
            (
                PutRequest::new(view_id, schema_id, &entries),
                entries,
                row_bytes,
            )
        })
}

fn arb_dtype() -> impl Strategy<Value = Dtype> {
    prop::sample::select(vec![
        Dtype::F32,
        Dtype::F64,
        Dtype::I32,
        Dtype::I64,
        Dtype::Bool,
    ])
}

/// Every response kind except GET, which only `encode_get_response` builds.
fn arb_response() -> impl Strategy<Value = Response> {
    let feature =
        (arb_dtype(), arb_str(), any::<[u8; 8]>()).prop_map(|(dtype, name, default)| FeatureSpec {
            dtype,
            name,
            default,
        });
    prop_oneof![
        (
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            arb_str()
        )
            .prop_map(|(version, shard, max_frame, max_batch, server)| {
                Response::Hello(HelloReply {
                    version,
                    shard,
                    max_frame,
                    max_batch,
                    server,
                })
            }),
        Just(Response::Pong),
        (
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            vec(feature, 0..12)
        )
            .prop_map(
                |(view_id, schema_id, row_bytes, stale_after_ms, max_staleness_ms, features)| {
                    Response::Schema(SchemaReply {
                        view_id,
                        schema_id,
                        row_bytes,
                        stale_after_ms,
                        max_staleness_ms,
                        features,
                    })
                }
            ),
        any::<u32>().prop_map(|written| Response::Put { written }),
        (prop::sample::select(ErrorCode::ALL.to_vec()), arb_str())
            .prop_map(|(code, message)| Response::Error(ProtocolError { code, message })),
    ]
}

#[derive(Debug, Clone)]
struct GetReply {
    request_id: u32,
    view_id: u16,
    schema_id: u32,
    row_bytes: usize,
    statuses: Vec<EntityStatus>,
    ages: Vec<u32>,
    rows: Vec<Vec<u8>>,
}

impl GetReply {
    fn encode(&self, out: &mut BytesMut) {
        encode_get_response(
            out,
            self.request_id,
            self.view_id,
            self.schema_id,
            self.row_bytes as u32,
            &self.statuses,
            &self.ages,
            self.rows.iter().map(|r| r.as_slice()),
        );
    }
}

fn arb_get_reply() -> impl Strategy<Value = GetReply> {
    let status = (prop::sample::select(Status::ALL.to_vec()), any::<bool>())
        .prop_map(|(s, cached)| EntityStatus::new(s, cached));
    (0usize..40, 0usize..30)
        .prop_flat_map(move |(n, row_bytes)| {
            (
                any::<u32>(),
                any::<u16>(),
                any::<u32>(),
                Just(row_bytes),
                vec(status.clone(), n),
                vec(any::<u32>(), n),
                vec(vec(any::<u8>(), row_bytes), n),
            )
        })
        .prop_map(
            |(request_id, view_id, schema_id, row_bytes, statuses, ages, rows)| GetReply {
                request_id,
                view_id,
                schema_id,
                row_bytes,
                statuses,
                ages,
                rows,
            },
        )
}

/// One encoded frame of any kind.
fn arb_frame_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (arb_request(), any::<u32>()).prop_map(|(r, id)| {
            let mut out = BytesMut::new();
            r.encode(&mut out, id);
            out.to_vec()
        }),
        (arb_response(), any::<u32>()).prop_map(|(r, id)| {
            let mut out = BytesMut::new();
            r.encode(&mut out, id);
            out.to_vec()
        }),
        arb_get_reply().prop_map(|g| {
            let mut out = BytesMut::new();
            g.encode(&mut out);
            out.to_vec()
        }),
    ]
}

fn arb_limits() -> impl Strategy<Value = Limits> {
    (
        prop_oneof![Just(DEFAULT_MAX_FRAME), 8u32..512, Just(u32::MAX)],
        prop_oneof![Just(4096u32), 0u32..16, Just(u32::MAX)],
    )
        .prop_map(|(max_frame, max_batch)| Limits {
            max_frame,
            max_batch,
        })
}

/// Every op byte a v1 frame uses, and any other.
fn arb_op() -> impl Strategy<Value = u8> {
    prop_oneof![
        prop::sample::select(vec![
            0x01u8, 0x02, 0x03, 0x10, 0x11, 0x81, 0x82, 0x83, 0x90, 0x91, 0xFF
        ]),
        any::<u8>(),
    ]
}

// ---- helpers ------------------------------------------------------------------------------------

/// Splits exactly one frame off `bytes`, which must hold nothing else.
fn one_frame(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = decode_frame(&mut buf, u32::MAX)
        .expect("a frame we encoded decodes")
        .expect("a frame we encoded is complete");
    assert!(buf.is_empty(), "{} bytes left after one frame", buf.len());
    frame
}

/// All frames in `buf`, until it needs more bytes. Panics on a frame error.
fn drain(buf: &mut BytesMut, out: &mut Vec<Frame>) {
    while let Some(f) = decode_frame(buf, DEFAULT_MAX_FRAME).expect("valid stream") {
        out.push(f);
    }
}

/// Exercises everything a decoded message offers, so a bad offset would panic here.
fn touch(resp: &Response) {
    if let Response::Get(g) = resp {
        for i in 0..g.n as usize {
            let _ = (g.status(i), g.age_ms(i), g.row(i).len());
        }
        assert_eq!(g.matrix().len(), g.n as usize * g.row_bytes as usize);
        assert_eq!(g.status_bytes().len(), g.n as usize);
    }
}

/// Decodes `frame` every way a peer might and never panics; on success the result is sane.
fn decode_every_way(frame: &Frame, limits: &Limits, row_bytes: usize) {
    if let Ok(Request::Put(p)) = Request::decode(frame, limits) {
        match p.entries("fuzz", row_bytes) {
            Ok(entries) => {
                assert_eq!(entries.len(), p.n as usize);
                assert!(entries.iter().all(|e| e.row.len() == row_bytes));
            }
            // The frame is well delimited, so a PUT that doesn't split is always BAD_ROW (which
            // keeps the connection), never MALFORMED.
            Err(e) => assert_eq!(e.code, ErrorCode::BadRow, "{e}"),
        }
    }
    if let Ok(resp) = Response::decode(frame, limits) {
        touch(&resp);
    }
}

// ---- properties ---------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn request_roundtrips(req in arb_request(), id in any::<u32>()) {
        let mut out = BytesMut::new();
        req.encode(&mut out, id);
        let bytes = out.to_vec();
        prop_assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len() - 4);
        let frame = one_frame(&bytes);
        prop_assert_eq!(frame.op, req.op() as u8);
        prop_assert_eq!(frame.request_id, id);
        let limits = Limits { max_frame: u32::MAX, max_batch: u32::MAX };
        let back = Request::decode(&frame, &limits).unwrap();
        prop_assert_eq!(&back, &req);
        let mut again = BytesMut::new();
        back.encode(&mut again, id);
        prop_assert_eq!(&again[..], &bytes[..]);
    }

    /// A GET whose keys are cut short or carry a bad length is refused as malformed, saying
    /// where reading stopped (the key's index, or the body offset), never decoded in part.
    #[test]
    fn a_get_with_cut_or_bad_keys_is_refused_at_that_key(
        keys in vec(arb_key(), 1..12),
        which in any::<prop::sample::Index>(),
        fault in prop_oneof![Just(0u16), Just(MAX_KEY_LEN as u16 + 1), Just(u16::MAX)],
        cut in any::<bool>(),
    ) {
        let mut out = BytesMut::new();
        Request::encode_get(&mut out, 7, 1, 0, 0, 0, &keys);
        let frame = decode_frame(&mut out, DEFAULT_MAX_FRAME).unwrap().unwrap();
        let mut body = frame.body.to_vec();
        let k = which.index(keys.len());
        // Where key k's length sits: past the 16 bytes of fixed fields and the keys before it.
        let at = 16 + keys[..k].iter().map(|key| 2 + key.len()).sum::<usize>();
        if cut {
            // Cut inside key k: its length, or its bytes.
            body.truncate(at + 1 + (keys[k].len() / 2));
        } else {
            body[at..at + 2].copy_from_slice(&fault.to_le_bytes());
        }
        let mut again = BytesMut::new();
        encode_frame(&mut again, Op::Get as u8, 7, &body);
        let frame = decode_frame(&mut again, DEFAULT_MAX_FRAME).unwrap().unwrap();
        let limits = Limits { max_frame: DEFAULT_MAX_FRAME, max_batch: 1000 };
        let err = Request::decode(&frame, &limits).expect_err("a broken key list decodes");
        prop_assert_eq!(err.code, ErrorCode::Malformed);
        if cut {
            prop_assert!(
                err.message.contains("ends early") || err.message.contains("cannot hold them"),
                "{}", err.message
            );
        } else {
            let named = format!("key {k} is {fault} bytes long");
            prop_assert!(err.message.contains(&named), "{}", err.message);
        }
    }

    #[test]
    fn encode_get_matches_request_encode(req in arb_request(), id in any::<u32>()) {
        if let Request::Get(g) = &req {
            let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
            req.encode(&mut a, id);
            let keys: Vec<&[u8]> = g.keys.iter().collect();
            Request::encode_get(&mut b, id, g.view_id, g.flags, g.schema_id, g.deadline_us, &keys);
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn put_entries_roundtrip((put, entries, row_bytes) in arb_put(), id in any::<u32>()) {
        let mut out = BytesMut::new();
        Request::Put(put.clone()).encode(&mut out, id);
        let frame = one_frame(&out);
        let Request::Put(back) = Request::decode(&frame, &Limits::default()).unwrap() else {
            panic!("a PUT decodes as a PUT");
        };
        prop_assert_eq!(&back, &put);
        prop_assert_eq!(back.entries("v", row_bytes).unwrap(), entries);
    }

    #[test]
    fn put_with_wrong_row_length_is_bad_row(
        (put, entries, row_bytes) in arb_put(),
        delta in prop_oneof![1usize..4, Just(usize::MAX)],
    ) {
        // Read with a row length other than the one the rows were written with.
        let wrong = if delta == usize::MAX { row_bytes.saturating_sub(1) } else { row_bytes + delta };
        prop_assume!(wrong != row_bytes && !entries.is_empty());
        match put.entries("v", wrong) {
            Err(e) => prop_assert_eq!(e.code, ErrorCode::BadRow),
            // Rows carry no length, so several entries can, rarely, reparse as other entries of
            // the wrong length; one entry never can.
            Ok(_) => prop_assert!(entries.len() > 1),
        }
    }

    #[test]
    fn response_roundtrips(resp in arb_response(), id in any::<u32>()) {
        let mut out = BytesMut::new();
        resp.encode(&mut out, id);
        let bytes = out.to_vec();
        let frame = one_frame(&bytes);
        prop_assert_eq!(frame.request_id, id);
        let back = Response::decode(&frame, &Limits::default()).unwrap();
        prop_assert_eq!(&back, &resp);
        let mut again = BytesMut::new();
        back.encode(&mut again, id);
        prop_assert_eq!(&again[..], &bytes[..]);
    }

    #[test]
    fn get_reply_roundtrips(g in arb_get_reply(), prefix in vec(any::<u8>(), 0..16)) {
        // Encode after some unrelated bytes, so the frame does not start on an aligned address
        // of the buffer: alignment must hold relative to the frame's first byte.
        let mut out = BytesMut::from(&prefix[..]);
        g.encode(&mut out);
        let n = g.statuses.len();
        prop_assert_eq!(out.len() - prefix.len(), get_response_len(n, g.row_bytes));
        let _ = out.split_to(prefix.len());
        let bytes = out.to_vec();
        // Decode in place, so the frame keeps its unaligned position in the buffer.
        let frame = decode_frame(&mut out, DEFAULT_MAX_FRAME).unwrap().unwrap();
        prop_assert!(out.is_empty());
        prop_assert_eq!(frame.op, 0x90);
        prop_assert_eq!(frame.request_id, g.request_id);
        let frame_start = frame.body.as_ptr() as usize - HEADER_LEN;
        let resp = Response::decode(&frame, &Limits::default()).unwrap();
        let Response::Get(r) = &resp else { panic!("a GET reply decodes as GET") };
        prop_assert_eq!(r.view_id, g.view_id);
        prop_assert_eq!(r.schema_id, g.schema_id);
        prop_assert_eq!(r.n as usize, n);
        prop_assert_eq!(r.row_bytes as usize, g.row_bytes);
        let status_bytes: Vec<u8> = g.statuses.iter().map(|s| s.to_byte()).collect();
        prop_assert_eq!(r.status_bytes(), &status_bytes[..]);
        for i in 0..n {
            prop_assert_eq!(r.status(i), g.statuses[i]);
            prop_assert_eq!(r.age_ms(i), g.ages[i]);
            prop_assert_eq!(r.row(i), &g.rows[i][..]);
        }
        let matrix_at = r.matrix().as_ptr() as usize - frame_start;
        prop_assert_eq!(matrix_at % 8, 0);
        prop_assert_eq!(matrix_at, align8(align8(28 + n) + 4 * n));
        prop_assert_eq!(r.matrix(), &g.rows.concat()[..]);
        prop_assert_eq!(&r.matrix_bytes()[..], r.matrix());
        // The padding is zero.
        let ages_at = align8(28 + n);
        prop_assert!(bytes[28 + n..ages_at].iter().all(|b| *b == 0));
        prop_assert!(bytes[ages_at + 4 * n..matrix_at].iter().all(|b| *b == 0));
        let mut again = BytesMut::new();
        resp.encode(&mut again, g.request_id);
        prop_assert_eq!(&again[..], &bytes[..]);
    }

    #[test]
    fn decode_frame_never_panics_or_overreads(
        input in prop_oneof![
            vec(any::<u8>(), 0..256),
            // Mostly plausible headers: a small len, a zero flags/reserved, then noise.
            (0u32..64, any::<u8>(), vec(any::<u8>(), 0..128)).prop_map(|(len, op, rest)| {
                let mut v = len.to_le_bytes().to_vec();
                v.extend_from_slice(&[op, 0, 0, 0]);
                v.extend_from_slice(&rest);
                v
            }),
        ],
        max_frame in prop_oneof![Just(DEFAULT_MAX_FRAME), 0u32..128, any::<u32>()],
    ) {
        let mut buf = BytesMut::from(&input[..]);
        let mut consumed = 0;
        loop {
            match decode_frame(&mut buf, max_frame) {
                Ok(Some(f)) => {
                    prop_assert!(f.body.len() <= input.len());
                    prop_assert!(f.body.len() + HEADER_LEN - 4 <= max_frame as usize);
                    prop_assert_eq!(f.flags, 0);
                    consumed += HEADER_LEN + f.body.len();
                    prop_assert!(consumed <= input.len());
                    prop_assert_eq!(&input[consumed - f.body.len()..consumed], &f.body[..]);
                    prop_assert_eq!(buf.len(), input.len() - consumed);
                }
                Ok(None) => {
                    prop_assert_eq!(buf.len(), input.len() - consumed);
                    break;
                }
                Err(_) => break,
            }
        }
    }

    #[test]
    fn decoding_random_bodies_never_panics(
        op in arb_op(),
        body in vec(any::<u8>(), 0..160),
        limits in arb_limits(),
        row_bytes in prop_oneof![0usize..48, Just(u32::MAX as usize)],
    ) {
        let frame = Frame { op, flags: 0, request_id: 1, body: Bytes::from(body) };
        decode_every_way(&frame, &limits, row_bytes);
    }

    #[test]
    fn decoding_mutated_frames_never_panics(
        bytes in arb_frame_bytes(),
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
        cut in any::<prop::sample::Index>(),
        limits in arb_limits(),
        row_bytes in 0usize..40,
    ) {
        // One byte of the body changed, then the body cut short; the header is kept consistent so
        // the mutation reaches the body decoders.
        let mut bytes = bytes;
        if bytes.len() > HEADER_LEN {
            let i = HEADER_LEN + at.index(bytes.len() - HEADER_LEN);
            bytes[i] = value;
            let keep = HEADER_LEN + cut.index(bytes.len() - HEADER_LEN + 1);
            bytes.truncate(keep);
            let len = (keep - 4) as u32;
            bytes[..4].copy_from_slice(&len.to_le_bytes());
        }
        let frame = one_frame(&bytes);
        decode_every_way(&frame, &limits, row_bytes);
    }

    #[test]
    fn split_streams_decode_the_same(frames in vec(arb_frame_bytes(), 1..5)) {
        let stream: Vec<u8> = frames.concat();
        let mut whole = Vec::new();
        let mut buf = BytesMut::from(&stream[..]);
        drain(&mut buf, &mut whole);
        prop_assert!(buf.is_empty());
        prop_assert_eq!(whole.len(), frames.len());
        // Two reads, split at every byte boundary.
        for k in 0..=stream.len() {
            let mut got = Vec::new();
            let mut buf = BytesMut::from(&stream[..k]);
            drain(&mut buf, &mut got);
            buf.extend_from_slice(&stream[k..]);
            drain(&mut buf, &mut got);
            prop_assert!(buf.is_empty());
            prop_assert_eq!(&got, &whole, "split at {}", k);
        }
        // One byte per read.
        let mut got = Vec::new();
        let mut buf = BytesMut::new();
        for b in &stream {
            buf.extend_from_slice(&[*b]);
            drain(&mut buf, &mut got);
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(&got, &whole);
    }
}
