//! Fuzzes the protocol v1 decoder: frame splitting, request and response decoding, PUT entry
//! splitting, and the re-encoding of everything that decodes.
//!
//! Input layout: the first byte picks the decoder limits (and a chunk size and an extra
//! `row_bytes`); the rest is a byte stream as it would arrive on a connection, possibly holding
//! several frames. Any panic is a bug. Checked besides "does not panic":
//!
//! * `decode_frame` terminates: every `Ok(Some(_))` consumes at least a header's worth of bytes,
//!   `Ok(None)` only when the buffered bytes really are an incomplete frame, and errors carry the
//!   codes and request ids SPEC.md 6.1 gives.
//! * Feeding the stream in small chunks gives the same frames and the same final outcome as
//!   feeding it whole.
//! * Error codes are those SPEC.md 6.2-6.4 allow for each stage.
//! * Round trip: a decoded request/response re-encodes to the frame it came from (PUT's reserved
//!   field aside: it is not checked, and encodes as 0), and that decodes to an equal value. PUT
//!   entries rebuild the same PUT through `PutRequest::new`. A GET reply rebuilt with
//!   `encode_get_response` from its accessors decodes to the same statuses, ages and rows.
#![no_main]

use bytes::{Bytes, BytesMut};
use featureproxy_protocol::{
    decode_frame, encode_frame, encode_get_response, get_response_len, EntityStatus, ErrorCode,
    Frame, Limits, ProtocolError, PutRequest, Request, Response, HEADER_LEN, MAX_KEY_LEN, MIN_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, stream)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_frame: [64 * 1024, 1024, 32, MIN_LEN][(cfg & 3) as usize],
        max_batch: [64, 3, 0, u32::MAX][((cfg >> 2) & 3) as usize],
    };
    let chunk = [1, 3, 12, 100][((cfg >> 4) & 3) as usize];
    let extra_row_bytes = (cfg >> 4) as usize;

    let (frames, end) = split_frames(stream, stream.len(), limits.max_frame);
    let (chunked, chunked_end) = split_frames(stream, chunk, limits.max_frame);
    assert_eq!(
        frames, chunked,
        "chunked feed (chunk {chunk}) split different frames"
    );
    assert_eq!(
        end, chunked_end,
        "chunked feed (chunk {chunk}) ended differently"
    );

    for frame in &frames {
        check_request(frame, &limits, extra_row_bytes);
        check_response(frame, &limits);
    }
});

/// How a stream of frames ended: waiting for more bytes, or a frame-level error.
#[derive(Debug, PartialEq)]
enum End {
    Incomplete,
    Error(u32, ProtocolError),
}

/// Feeds `stream` to `decode_frame` `chunk` bytes at a time, splitting off every frame it can.
fn split_frames(stream: &[u8], chunk: usize, max_frame: u32) -> (Vec<Frame>, End) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match decode_frame(&mut buf, max_frame) {
                Ok(Some(frame)) => {
                    let used = before - buf.len();
                    assert!(used >= HEADER_LEN, "a frame consumed only {used} bytes");
                    assert_eq!(used, HEADER_LEN + frame.body.len());
                    assert!(used - 4 <= max_frame as usize);
                    assert_eq!(frame.flags, 0);
                    frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    // Really incomplete: no length yet, no header yet, or less than 4 + len.
                    if buf.len() >= HEADER_LEN {
                        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                        assert!(len >= MIN_LEN && len <= max_frame);
                        assert!(
                            buf.len() < 4 + len as usize,
                            "a whole frame was left buffered"
                        );
                    }
                    break;
                }
                Err((id, e)) => {
                    assert_eq!(buf.len(), before, "a frame error consumed bytes");
                    assert!(buf.len() >= 4);
                    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    if len < MIN_LEN {
                        assert_eq!((id, e.code), (0, ErrorCode::Malformed));
                    } else {
                        assert!(buf.len() >= HEADER_LEN);
                        assert_eq!(id, u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]));
                        let want = if len > max_frame {
                            ErrorCode::FrameTooLarge
                        } else {
                            ErrorCode::Malformed
                        };
                        assert_eq!(e.code, want, "{e}");
                    }
                    return (frames, End::Error(id, e));
                }
            }
        }
    }
    (frames, End::Incomplete)
}

/// The exact bytes `frame` was split from (flags and reserved are 0 in every accepted frame).
fn frame_bytes(frame: &Frame) -> BytesMut {
    let mut out = BytesMut::new();
    encode_frame(&mut out, frame.op, frame.request_id, &frame.body);
    out
}

/// Splits `encoded` back into exactly one frame.
fn one_frame(encoded: &BytesMut, max_frame: u32) -> Frame {
    let mut buf = encoded.clone();
    let frame = decode_frame(&mut buf, max_frame)
        .expect("a re-encoded frame fails decode_frame")
        .expect("a re-encoded frame is incomplete");
    assert!(
        buf.is_empty(),
        "a re-encoded frame left {} bytes",
        buf.len()
    );
    frame
}

fn check_request(frame: &Frame, limits: &Limits, extra_row_bytes: usize) {
    let req = match Request::decode(frame, limits) {
        Ok(req) => req,
        Err(e) => {
            assert!(
                matches!(
                    e.code,
                    ErrorCode::UnknownOp | ErrorCode::Malformed | ErrorCode::BatchTooLarge
                ),
                "Request::decode failed with {e}"
            );
            return;
        }
    };
    assert_eq!(req.op() as u8, frame.op);

    // Round trip: the same bytes (PUT's unchecked reserved field encodes as 0), the same value.
    let mut out = BytesMut::new();
    req.encode(&mut out, frame.request_id);
    let mut want = frame_bytes(frame);
    if let Request::Put(_) = req {
        want[14] = 0;
        want[15] = 0;
    }
    assert_eq!(out, want, "{req:?} re-encodes to other bytes");
    let again = one_frame(&out, limits.max_frame);
    assert_eq!(again.request_id, frame.request_id);
    assert_eq!(Request::decode(&again, limits).as_ref(), Ok(&req));

    match &req {
        Request::Get(g) => {
            assert!(g.keys.len() as u64 <= limits.max_batch as u64);
            assert!(g.keys.iter().all(|k| (1..=MAX_KEY_LEN).contains(&k.len())));
            // The borrowed-key encoder writes the same frame.
            let keys: Vec<&[u8]> = g.keys.iter().collect();
            let mut out2 = BytesMut::new();
            Request::encode_get(
                &mut out2,
                frame.request_id,
                g.view_id,
                g.flags,
                g.schema_id,
                g.deadline_us,
                &keys,
            );
            assert_eq!(out2, out);
        }
        Request::Put(p) => {
            assert!(p.n <= limits.max_batch);
            check_put_entries(p, frame, extra_row_bytes);
        }
        _ => {}
    }
}

fn check_put_entries(p: &PutRequest, frame: &Frame, extra_row_bytes: usize) {
    // A row length that fits the body exactly when every key is as long as the first one.
    let derived = (p.n > 0 && p.encoded_entries.len() >= 2).then(|| {
        let key_len = u16::from_le_bytes([p.encoded_entries[0], p.encoded_entries[1]]) as usize;
        (p.encoded_entries.len() / p.n as usize).saturating_sub(2 + key_len + 8)
    });
    let row_lengths = [
        0,
        1,
        4,
        13,
        64,
        u32::MAX as usize,
        extra_row_bytes,
        frame.body.len(),
    ];
    for row_bytes in row_lengths.into_iter().chain(derived) {
        let entries = match p.entries("fuzz", row_bytes) {
            Ok(entries) => entries,
            Err(e) => {
                assert_eq!(
                    e.code,
                    ErrorCode::BadRow,
                    "PutRequest::entries failed with {e}"
                );
                continue;
            }
        };
        assert_eq!(entries.len(), p.n as usize);
        for e in &entries {
            assert!((1..=MAX_KEY_LEN).contains(&e.key.len()));
            assert_eq!(e.row.len(), row_bytes);
        }
        // The entries rebuild the same PUT, which splits into the same entries.
        let rebuilt = PutRequest::new(p.view_id, p.schema_id, &entries);
        assert_eq!(&rebuilt, p, "PutRequest::new of the entries differs");
        assert_eq!(rebuilt.entries("fuzz", row_bytes).as_ref(), Ok(&entries));
    }
}

fn check_response(frame: &Frame, limits: &Limits) {
    let resp = match Response::decode(frame, limits) {
        Ok(resp) => resp,
        Err(e) => {
            assert_eq!(
                e.code,
                ErrorCode::Malformed,
                "Response::decode failed with {e}"
            );
            return;
        }
    };

    let mut out = BytesMut::new();
    resp.encode(&mut out, frame.request_id);
    assert_eq!(
        out,
        frame_bytes(frame),
        "{resp:?} re-encodes to other bytes"
    );
    let again = one_frame(&out, limits.max_frame);
    assert_eq!(again.request_id, frame.request_id);
    assert_eq!(Response::decode(&again, limits).as_ref(), Ok(&resp));

    if let Response::Get(g) = &resp {
        let (n, rb) = (g.n as usize, g.row_bytes as usize);
        assert!(g.n <= limits.max_batch);
        assert_eq!(get_response_len(n, rb), HEADER_LEN + frame.body.len());
        assert_eq!(g.status_bytes().len(), n);
        assert_eq!(g.matrix().len(), n * rb);
        assert_eq!(g.matrix_bytes(), g.matrix());
        let statuses: Vec<EntityStatus> = (0..n).map(|i| g.status(i)).collect();
        for (i, s) in statuses.iter().enumerate() {
            assert_eq!(s.to_byte(), g.status_bytes()[i]);
        }
        let ages: Vec<u32> = (0..n).map(|i| g.age_ms(i)).collect();
        let rows: Vec<&[u8]> = (0..n).map(|i| g.row(i)).collect();
        assert_eq!(rows.concat(), g.matrix());

        // Rebuilt through the server's encoder: padding may differ (not checked on decode), the
        // content may not.
        let mut out = BytesMut::new();
        encode_get_response(
            &mut out,
            frame.request_id,
            g.view_id,
            g.schema_id,
            g.row_bytes,
            &statuses,
            &ages,
            rows.iter().copied(),
        );
        assert_eq!(out.len(), get_response_len(n, rb));
        let rebuilt = one_frame(&out, limits.max_frame);
        let Ok(Response::Get(r)) = Response::decode(&rebuilt, limits) else {
            panic!("encode_get_response output does not decode as a GET reply");
        };
        assert_eq!(
            (r.view_id, r.schema_id, r.n, r.row_bytes),
            (g.view_id, g.schema_id, g.n, g.row_bytes)
        );
        assert_eq!(r.status_bytes(), g.status_bytes());
        assert_eq!((0..n).map(|i| r.age_ms(i)).collect::<Vec<_>>(), ages);
        assert_eq!(r.matrix(), g.matrix());
        let _: Bytes = r.matrix_bytes();
    }
}
