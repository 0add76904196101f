//! Checks every test vector in `protocol/vectors/` against the codec, as `vectors/MANIFEST` says.
//!
//! * `ok`: the bytes are exactly one frame; it decodes (`decode_frame`, then `Request::decode` or
//!   `Response::decode`) and re-encodes to the same bytes. A PUT also splits into its entries with
//!   the manifest's `row_bytes`, and `PutRequest::new` of those entries re-encodes the same bytes.
//! * `incomplete`: `decode_frame` asks for more bytes.
//! * an error name: the first stage that fails (`decode_frame`, `Request::decode` /
//!   `Response::decode`, then for a PUT `PutRequest::entries`) fails with exactly that code.
//!
//! Every vector is also fed to `decode_frame` one byte at a time, which must reach the same
//! frame-level outcome as feeding it whole.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use featureproxy_protocol::{
    decode_frame, ErrorCode, Frame, Limits, ProtocolError, PutRequest, Request, Response,
};

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Response,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Ok,
    Incomplete,
    Error(ErrorCode),
}

#[derive(Debug)]
struct Case {
    file: String,
    line: usize,
    kind: Kind,
    expect: Expect,
    limits: Limits,
    row_bytes: Option<usize>,
    request_id: Option<u32>,
}

fn parse_manifest() -> Vec<Case> {
    let path = vectors_dir().join("MANIFEST");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut cases = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap().trim();
        if content.is_empty() {
            continue;
        }
        let mut cols = content.split_whitespace();
        let (Some(file), Some(kind), Some(expect)) = (cols.next(), cols.next(), cols.next()) else {
            panic!("MANIFEST:{line}: want `file kind expect [key=value...]`, got {raw:?}");
        };
        let kind = match kind {
            "request" => Kind::Request,
            "response" => Kind::Response,
            k => panic!("MANIFEST:{line}: kind {k:?} is neither request nor response"),
        };
        let expect = match expect {
            "ok" => Expect::Ok,
            "incomplete" => Expect::Incomplete,
            e => Expect::Error(
                ErrorCode::from_name(e)
                    .unwrap_or_else(|| panic!("MANIFEST:{line}: unknown expectation {e:?}")),
            ),
        };
        let mut case = Case {
            file: file.to_string(),
            line,
            kind,
            expect,
            limits: Limits::default(),
            row_bytes: None,
            request_id: None,
        };
        for col in cols {
            let (k, v) = col
                .split_once('=')
                .unwrap_or_else(|| panic!("MANIFEST:{line}: column {col:?} is not key=value"));
            let v: u64 = v
                .parse()
                .unwrap_or_else(|_| panic!("MANIFEST:{line}: {k}={v:?} is not a number"));
            let v32 = u32::try_from(v).unwrap_or_else(|_| panic!("MANIFEST:{line}: {k} too big"));
            match k {
                "max_frame" => case.limits.max_frame = v32,
                "max_batch" => case.limits.max_batch = v32,
                "row_bytes" => case.row_bytes = Some(v32 as usize),
                "request_id" => case.request_id = Some(v32),
                _ => panic!("MANIFEST:{line}: unknown column {k:?}"),
            }
        }
        cases.push(case);
    }
    cases
}

/// Whitespace-separated hex; each token an even number of hex digits; `#` to end of line is a
/// comment.
fn parse_hex(path: &Path) -> Vec<u8> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let content = raw.split('#').next().unwrap();
        for tok in content.split_whitespace() {
            let bad = || panic!("{}:{}: bad hex token {tok:?}", path.display(), i + 1);
            if tok.len() % 2 != 0 || !tok.bytes().all(|b| b.is_ascii_hexdigit()) {
                bad();
            }
            for pair in tok.as_bytes().chunks(2) {
                let s = std::str::from_utf8(pair).unwrap();
                out.push(u8::from_str_radix(s, 16).unwrap_or_else(|_| bad()));
            }
        }
    }
    out
}

/// What `decode_frame` makes of `bytes`: fed whole, and fed one byte at a time.
#[derive(Debug, PartialEq)]
enum FrameOutcome {
    Frame(Frame, usize),
    Incomplete,
    Error(u32, ErrorCode),
}

fn frame_outcome_whole(bytes: &[u8], max_frame: u32) -> FrameOutcome {
    let mut buf = BytesMut::from(bytes);
    match decode_frame(&mut buf, max_frame) {
        Ok(Some(f)) => FrameOutcome::Frame(f, buf.len()),
        Ok(None) => FrameOutcome::Incomplete,
        Err((id, e)) => FrameOutcome::Error(id, e.code),
    }
}

fn frame_outcome_bytewise(bytes: &[u8], max_frame: u32) -> FrameOutcome {
    let mut buf = BytesMut::new();
    for (i, b) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        match decode_frame(&mut buf, max_frame) {
            Ok(Some(f)) => {
                // Whatever follows the frame stays in the buffer.
                buf.extend_from_slice(&bytes[i + 1..]);
                return FrameOutcome::Frame(f, buf.len());
            }
            Ok(None) => {}
            Err((id, e)) => return FrameOutcome::Error(id, e.code),
        }
    }
    FrameOutcome::Incomplete
}

/// Runs one case; returns a description of each way it disagrees with the manifest.
fn check(case: &Case, bytes: &[u8]) -> Result<(), String> {
    let whole = frame_outcome_whole(bytes, case.limits.max_frame);
    let bytewise = frame_outcome_bytewise(bytes, case.limits.max_frame);
    if whole != bytewise {
        return Err(format!(
            "decode_frame disagrees with itself: whole input gives {whole:?}, byte by byte {bytewise:?}"
        ));
    }
    let frame = match whole {
        FrameOutcome::Incomplete => {
            return match case.expect {
                Expect::Incomplete => Ok(()),
                e => Err(format!("decode_frame wants more bytes; expected {e:?}")),
            };
        }
        FrameOutcome::Error(id, code) => {
            if let Some(want) = case.request_id {
                if id != want {
                    return Err(format!(
                        "decode_frame error carries request_id {id}, not {want}"
                    ));
                }
            }
            return match case.expect {
                Expect::Error(want) if want == code => Ok(()),
                e => Err(format!("decode_frame fails with {code}; expected {e:?}")),
            };
        }
        FrameOutcome::Frame(frame, left) => {
            if left != 0 {
                return Err(format!(
                    "{left} bytes left after the frame: a vector is one frame"
                ));
            }
            frame
        }
    };
    if let Some(want) = case.request_id {
        if frame.request_id != want {
            return Err(format!("request_id is {}, not {want}", frame.request_id));
        }
    }
    let result = match case.kind {
        Kind::Request => check_request(case, &frame, bytes),
        Kind::Response => check_response(case, &frame, bytes),
    };
    match (result, case.expect) {
        (Ok(()), Expect::Ok) => Ok(()),
        (Ok(()), e) => Err(format!("decodes fine; expected {e:?}")),
        (Err(Failure::Decode(_, err)), Expect::Error(want)) if err.code == want => Ok(()),
        (Err(Failure::Decode(stage, err)), e) => {
            Err(format!("{stage} fails with {err}; expected {e:?}"))
        }
        (Err(Failure::Check(msg)), _) => Err(msg),
    }
}

enum Failure {
    /// A decoder refused the frame.
    Decode(&'static str, ProtocolError),
    /// The frame decoded, but something about the result is wrong.
    Check(String),
}

fn check_request(case: &Case, frame: &Frame, bytes: &[u8]) -> Result<(), Failure> {
    let req =
        Request::decode(frame, &case.limits).map_err(|e| Failure::Decode("Request::decode", e))?;
    let mut out = BytesMut::new();
    req.encode(&mut out, frame.request_id);
    if out[..] != bytes[..] {
        return Err(Failure::Check(format!(
            "decoded {req:?} but re-encodes to different bytes: {:02x?}",
            &out[..]
        )));
    }
    if let Request::Put(put) = &req {
        let Some(row_bytes) = case.row_bytes else {
            return Err(Failure::Check(
                "a PUT vector needs row_bytes= in MANIFEST".into(),
            ));
        };
        let entries = put
            .entries("vector", row_bytes)
            .map_err(|e| Failure::Decode("PutRequest::entries", e))?;
        let mut out = BytesMut::new();
        Request::Put(PutRequest::new(put.view_id, put.schema_id, &entries))
            .encode(&mut out, frame.request_id);
        if out[..] != bytes[..] {
            return Err(Failure::Check(
                "PutRequest::new of the decoded entries re-encodes to different bytes".into(),
            ));
        }
    } else if case.row_bytes.is_some() {
        return Err(Failure::Check(
            "row_bytes= given for a request that is not a PUT".into(),
        ));
    }
    Ok(())
}

fn check_response(case: &Case, frame: &Frame, bytes: &[u8]) -> Result<(), Failure> {
    let resp = Response::decode(frame, &case.limits)
        .map_err(|e| Failure::Decode("Response::decode", e))?;
    if let Response::Get(g) = &resp {
        // Every accessor works on every entity, and the matrix is the rows back to back.
        let rows: Vec<u8> = (0..g.n as usize).flat_map(|i| g.row(i).to_vec()).collect();
        if rows != g.matrix() {
            return Err(Failure::Check(
                "matrix() is not the rows concatenated".into(),
            ));
        }
        for i in 0..g.n as usize {
            let _ = (g.status(i), g.age_ms(i));
        }
        let matrix_at = g.matrix().as_ptr() as usize - frame.body.as_ptr() as usize + 12;
        if matrix_at % 8 != 0 {
            return Err(Failure::Check(format!(
                "matrix at frame offset {matrix_at}"
            )));
        }
    }
    let mut out = BytesMut::new();
    resp.encode(&mut out, frame.request_id);
    if out[..] != bytes[..] {
        return Err(Failure::Check(format!(
            "decoded {resp:?} but re-encodes to different bytes: {:02x?}",
            &out[..]
        )));
    }
    Ok(())
}

#[test]
fn every_vector_behaves_as_the_manifest_says() {
    let cases = parse_manifest();
    assert!(!cases.is_empty(), "MANIFEST lists no vectors");
    let mut failures = Vec::new();
    for case in &cases {
        let path = vectors_dir().join(&case.file);
        if !path.is_file() {
            failures.push(format!(
                "{} (MANIFEST:{}): file is missing",
                case.file, case.line
            ));
            continue;
        }
        let bytes = parse_hex(&path);
        if let Err(msg) = check(case, &bytes) {
            failures.push(format!("{} (MANIFEST:{}): {msg}", case.file, case.line));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn manifest_and_vector_files_match() {
    let cases = parse_manifest();
    let mut listed = BTreeMap::new();
    for case in &cases {
        if let Some(first) = listed.insert(case.file.clone(), case.line) {
            panic!(
                "MANIFEST:{}: {} is already listed on line {first}",
                case.line, case.file
            );
        }
        assert!(
            case.file.ends_with(".hex") && !case.file.contains('/'),
            "MANIFEST:{}: {} is not a NAME.hex file in vectors/",
            case.line,
            case.file
        );
    }
    let on_disk: BTreeSet<String> = fs::read_dir(vectors_dir())
        .expect("read vectors/")
        .map(|e| {
            e.expect("read vectors/")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".hex"))
        .collect();
    let missing: Vec<_> = listed.keys().filter(|f| !on_disk.contains(*f)).collect();
    let unlisted: Vec<_> = on_disk
        .iter()
        .filter(|f| !listed.contains_key(*f))
        .collect();
    assert!(
        missing.is_empty(),
        "listed in MANIFEST but missing: {missing:?}"
    );
    assert!(
        unlisted.is_empty(),
        ".hex files not in MANIFEST: {unlisted:?}"
    );
}

/// The manifest keeps covering every frame kind and every error the codec itself raises, so a
/// vector can't be dropped by accident.
#[test]
fn manifest_covers_every_kind_and_error() {
    let cases = parse_manifest();
    let mut ok_ops = BTreeSet::new();
    let mut errors = BTreeSet::new();
    for case in &cases {
        let bytes = parse_hex(&vectors_dir().join(&case.file));
        match case.expect {
            Expect::Ok if bytes.len() > 4 => {
                ok_ops.insert((case.kind == Kind::Request, bytes[4]));
            }
            Expect::Error(code) => {
                errors.insert(code.name());
            }
            _ => {}
        }
    }
    for op in [0x01, 0x02, 0x03, 0x10, 0x11] {
        assert!(
            ok_ops.contains(&(true, op)),
            "no ok request vector for op {op:#04x}"
        );
    }
    for op in [0x81, 0x82, 0x83, 0x90, 0x91, 0xFF] {
        assert!(
            ok_ops.contains(&(false, op)),
            "no ok response vector for op {op:#04x}"
        );
    }
    for name in [
        "MALFORMED",
        "FRAME_TOO_LARGE",
        "UNKNOWN_OP",
        "BATCH_TOO_LARGE",
        "BAD_ROW",
    ] {
        assert!(errors.contains(name), "no vector expects {name}");
    }
}

fn decode_response_vector(file: &str) -> Result<Response, ProtocolError> {
    let bytes = parse_hex(&vectors_dir().join(file));
    let mut buf = BytesMut::from(&bytes[..]);
    let frame = decode_frame(&mut buf, Limits::default().max_frame)
        .map_err(|(_, e)| e)?
        .expect("one whole frame");
    Response::decode(&frame, &Limits::default())
}

/// FORBIDDEN (14) is a code like the others: it decodes, names the op and the view, and keeps the
/// connection. A code past the last one v1 defines is MALFORMED, and the message says which.
#[test]
fn forbidden_decodes_and_an_unknown_code_is_malformed() {
    match decode_response_vector("resp_error_forbidden.hex") {
        Ok(Response::Error(e)) => {
            assert_eq!(e.code, ErrorCode::Forbidden);
            assert_eq!(e.code as u16, 14);
            assert!(!e.code.closes_connection());
            assert!(
                e.message.contains("GET") && e.message.contains("user_features"),
                "{}",
                e.message
            );
        }
        other => panic!("resp_error_forbidden.hex decodes to {other:?}"),
    }
    match decode_response_vector("bad_resp_error_unknown_code.hex") {
        Err(e) => {
            assert_eq!(e.code, ErrorCode::Malformed);
            assert!(e.message.contains("code 15"), "{}", e.message);
            assert!(e.message.contains("\"?\""), "{}", e.message);
        }
        other => panic!("bad_resp_error_unknown_code.hex decodes to {other:?}"),
    }
}
