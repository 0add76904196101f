//! Responses: what the server sends and a client decodes.

use bytes::{BufMut, Bytes, BytesMut};

use crate::reader::Reader;
use crate::request::put_str;
use crate::types::{OP_ERROR, RESPONSE_BIT};
use crate::{
    align8, Dtype, EntityStatus, ErrorCode, Frame, FrameWriter, Limits, Op, ProtocolError,
    HEADER_LEN,
};

/// A decoded response.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Hello(HelloReply),
    Pong,
    Schema(SchemaReply),
    Get(GetResponse),
    Put {
        written: u32,
    },
    /// An ERROR frame (op 0xFF).
    Error(ProtocolError),
}

/// The reply to HELLO: the server's limits, which a client should respect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloReply {
    pub version: u16,
    /// The shard (core) that owns this connection.
    pub shard: u16,
    pub max_frame: u32,
    pub max_batch: u32,
    /// e.g. "featureproxy/0.1.0".
    pub server: String,
}

/// The reply to SCHEMA: everything needed to read a view's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaReply {
    pub view_id: u16,
    /// Non-zero fingerprint of the view's version, feature names, dtypes and defaults.
    pub schema_id: u32,
    pub row_bytes: u32,
    pub stale_after_ms: u32,
    pub max_staleness_ms: u32,
    pub features: Vec<FeatureSpec>,
}

/// One feature of a view, in row order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureSpec {
    pub dtype: Dtype,
    pub name: String,
    /// The default in its dtype, little-endian, zero-padded to 8 bytes.
    pub default: [u8; 8],
}

/// A GET reply, kept as the received frame: statuses, ages and rows are read in place, and
/// [`GetResponse::matrix`] is the contiguous n x row_bytes block, ready to view without a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResponse {
    pub view_id: u16,
    pub schema_id: u32,
    pub n: u32,
    pub row_bytes: u32,
    /// The frame's body; the offsets below count from its start.
    body: Bytes,
    ages_at: usize,
    rows_at: usize,
}

/// Frame offset of a GET reply's first status byte: header, then view_id, 0, schema_id, n,
/// row_bytes.
const GET_STATUSES_AT: usize = HEADER_LEN + 16;

/// Frame offsets of the ages and of the rows, and the total frame size, of a GET reply for `n`
/// entities of `row_bytes` each (None on overflow).
fn get_layout(n: usize, row_bytes: usize) -> Option<(usize, usize, usize)> {
    let ages_at = align8(GET_STATUSES_AT.checked_add(n)?);
    let rows_at = align8(ages_at.checked_add(n.checked_mul(4)?)?);
    let end = rows_at.checked_add(n.checked_mul(row_bytes)?)?;
    Some((ages_at, rows_at, end))
}

/// The size in bytes of the whole GET reply frame for `n` entities of `row_bytes`: lets a server
/// check it against max_frame before encoding.
pub fn get_response_len(n: usize, row_bytes: usize) -> usize {
    get_layout(n, row_bytes).map_or(usize::MAX, |(_, _, end)| end)
}

impl GetResponse {
    /// The status of entity `i`.
    pub fn status(&self, i: usize) -> EntityStatus {
        // Validated on decode.
        EntityStatus::from_byte(self.status_bytes()[i]).unwrap_or(EntityStatus {
            status: crate::Status::Invalid,
            cached: false,
        })
    }

    /// The raw status bytes, one per entity.
    pub fn status_bytes(&self) -> &[u8] {
        let at = GET_STATUSES_AT - HEADER_LEN;
        &self.body[at..at + self.n as usize]
    }

    /// The age in milliseconds of entity `i`'s value; [`crate::AGE_UNKNOWN`] where none was found.
    pub fn age_ms(&self, i: usize) -> u32 {
        let at = self.ages_at - HEADER_LEN + 4 * i;
        u32::from_le_bytes([
            self.body[at],
            self.body[at + 1],
            self.body[at + 2],
            self.body[at + 3],
        ])
    }

    /// Row `i`: row_bytes bytes, features in schema order.
    pub fn row(&self, i: usize) -> &[u8] {
        let rb = self.row_bytes as usize;
        let at = self.rows_at - HEADER_LEN + i * rb;
        &self.body[at..at + rb]
    }

    /// All rows, one contiguous n x row_bytes block that starts on an 8-byte boundary of the frame.
    pub fn matrix(&self) -> &[u8] {
        &self.body[self.rows_at - HEADER_LEN..]
    }

    /// The same block as a `Bytes` sharing the received buffer.
    pub fn matrix_bytes(&self) -> Bytes {
        self.body.slice(self.rows_at - HEADER_LEN..)
    }

    fn decode(body: Bytes, limits: &Limits) -> Result<GetResponse, ProtocolError> {
        let mut r = Reader::new(body.clone(), "GET reply");
        let view_id = r.u16("view_id")?;
        let _zero = r.u16("reserved")?;
        let schema_id = r.u32("schema_id")?;
        let n = r.u32("n")?;
        let row_bytes = r.u32("row_bytes")?;
        if n > limits.max_batch {
            return Err(ProtocolError::malformed(format!(
                "GET reply carries {n} entities, above max_batch {}",
                limits.max_batch
            )));
        }
        let (ages_at, rows_at, end) = get_layout(n as usize, row_bytes as usize)
            .ok_or_else(|| ProtocolError::malformed("GET reply sizes overflow"))?;
        if end - HEADER_LEN != body.len() {
            return Err(ProtocolError::malformed(format!(
                "GET reply for {n} rows of {row_bytes} bytes must be {} bytes, got {}",
                end,
                body.len() + HEADER_LEN
            )));
        }
        let statuses =
            &body[GET_STATUSES_AT - HEADER_LEN..GET_STATUSES_AT - HEADER_LEN + n as usize];
        if let Some(bad) = statuses
            .iter()
            .find(|b| EntityStatus::from_byte(**b).is_none())
        {
            return Err(ProtocolError::malformed(format!(
                "GET reply has an unknown status byte {bad:#04x}"
            )));
        }
        Ok(GetResponse {
            view_id,
            schema_id,
            n,
            row_bytes,
            body,
            ages_at,
            rows_at,
        })
    }
}

/// Appends a GET reply frame to `out`, writing each row once, straight into the output buffer.
///
/// `rows` must yield exactly `statuses.len()` rows of `row_bytes` each; a short or long row is a
/// bug in the caller, caught by a debug assertion and padded or cut in release so the frame stays
/// well formed.
#[allow(clippy::too_many_arguments)]
pub fn encode_get_response<'a>(
    out: &mut BytesMut,
    request_id: u32,
    view_id: u16,
    schema_id: u32,
    row_bytes: u32,
    statuses: &[EntityStatus],
    ages: &[u32],
    rows: impl Iterator<Item = &'a [u8]>,
) {
    debug_assert_eq!(statuses.len(), ages.len());
    let n = statuses.len();
    let rb = row_bytes as usize;
    out.reserve(get_response_len(n, rb));
    let w = FrameWriter::start(out, Op::Get.response(), request_id);
    let base = w.frame_start();
    out.put_u16_le(view_id);
    out.put_u16_le(0);
    out.put_u32_le(schema_id);
    out.put_u32_le(n as u32);
    out.put_u32_le(row_bytes);
    // Statuses and ages are written in place (one resize each, then plain stores): a put per
    // item would check capacity and copy one to four bytes a hundred times per batch.
    let at = out.len();
    out.resize(at + n, 0);
    for (dst, s) in out[at..].iter_mut().zip(statuses) {
        *dst = s.to_byte();
    }
    pad_to_8(out, base);
    let at = out.len();
    out.resize(at + 4 * n, 0);
    for (dst, a) in out[at..].chunks_exact_mut(4).zip(ages) {
        dst.copy_from_slice(&a.to_le_bytes());
    }
    pad_to_8(out, base);
    let mut written = 0;
    for row in rows.take(n) {
        debug_assert_eq!(
            row.len(),
            rb,
            "row of the wrong length passed to encode_get_response"
        );
        let take = row.len().min(rb);
        out.put_slice(&row[..take]);
        out.put_bytes(0, rb - take);
        written += 1;
    }
    debug_assert_eq!(
        written, n,
        "fewer rows than statuses passed to encode_get_response"
    );
    out.put_bytes(0, (n - written) * rb);
    w.finish(out);
}

fn pad_to_8(out: &mut BytesMut, frame_start: usize) {
    let rel = out.len() - frame_start;
    out.put_bytes(0, align8(rel) - rel);
}

impl Response {
    /// Decodes a response frame (client side).
    pub fn decode(frame: &Frame, limits: &Limits) -> Result<Response, ProtocolError> {
        if frame.op == OP_ERROR {
            let mut r = Reader::new(frame.body.clone(), "ERROR reply");
            let code = r.u16("code")?;
            let message = r.string("message")?;
            r.finish()?;
            // A code this decoder does not know (a newer server's) is MALFORMED (SPEC.md 6.4),
            // named with its number and the server's message so the reader still learns both.
            let code = ErrorCode::from_u16(code).ok_or_else(|| {
                ProtocolError::malformed(format!(
                    "ERROR reply with code {code}, which protocol v1 does not define (1..={}); \
                     the server said: {message:?}",
                    ErrorCode::ALL.len()
                ))
            })?;
            return Ok(Response::Error(ProtocolError { code, message }));
        }
        let op = (frame.op & RESPONSE_BIT != 0)
            .then(|| Op::from_u8(frame.op & !RESPONSE_BIT))
            .flatten()
            .ok_or_else(|| {
                ProtocolError::malformed(format!("op {:#04x} is not a v1 response", frame.op))
            })?;
        if op == Op::Get {
            return GetResponse::decode(frame.body.clone(), limits).map(Response::Get);
        }
        let mut r = Reader::new(frame.body.clone(), "reply");
        let resp = match op {
            Op::Hello => Response::Hello(HelloReply {
                version: r.u16("version")?,
                shard: r.u16("shard")?,
                max_frame: r.u32("max_frame")?,
                max_batch: r.u32("max_batch")?,
                server: r.string("server")?,
            }),
            Op::Ping => Response::Pong,
            Op::Schema => {
                let view_id = r.u16("view_id")?;
                let schema_id = r.u32("schema_id")?;
                let row_bytes = r.u32("row_bytes")?;
                let stale_after_ms = r.u32("stale_after_ms")?;
                let max_staleness_ms = r.u32("max_staleness_ms")?;
                let n = r.u16("n_features")?;
                // Each feature takes at least 11 bytes (dtype, empty name, default).
                if n as usize > r.remaining() / 11 {
                    return Err(ProtocolError::malformed(format!(
                        "SCHEMA reply declares {n} features but has {} bytes left",
                        r.remaining()
                    )));
                }
                let mut features = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let code = r.u8("dtype")?;
                    let dtype = Dtype::from_u8(code).ok_or_else(|| {
                        ProtocolError::malformed(format!("SCHEMA reply has unknown dtype {code}"))
                    })?;
                    let name = r.string("feature name")?;
                    let mut default = [0u8; 8];
                    default.copy_from_slice(&r.bytes(8, "default")?);
                    features.push(FeatureSpec {
                        dtype,
                        name,
                        default,
                    });
                }
                Response::Schema(SchemaReply {
                    view_id,
                    schema_id,
                    row_bytes,
                    stale_after_ms,
                    max_staleness_ms,
                    features,
                })
            }
            Op::Put => Response::Put {
                written: r.u32("written")?,
            },
            Op::Get => unreachable!("handled above"),
        };
        r.finish()?;
        Ok(resp)
    }

    /// Appends this response as one frame to `out`.
    pub fn encode(&self, out: &mut BytesMut, request_id: u32) {
        let op = match self {
            Response::Hello(_) => Op::Hello.response(),
            Response::Pong => Op::Ping.response(),
            Response::Schema(_) => Op::Schema.response(),
            Response::Get(_) => Op::Get.response(),
            Response::Put { .. } => Op::Put.response(),
            Response::Error(_) => OP_ERROR,
        };
        let w = FrameWriter::start(out, op, request_id);
        match self {
            Response::Hello(h) => {
                out.put_u16_le(h.version);
                out.put_u16_le(h.shard);
                out.put_u32_le(h.max_frame);
                out.put_u32_le(h.max_batch);
                put_str(out, &h.server);
            }
            Response::Pong => {}
            Response::Schema(s) => {
                out.put_u16_le(s.view_id);
                out.put_u32_le(s.schema_id);
                out.put_u32_le(s.row_bytes);
                out.put_u32_le(s.stale_after_ms);
                out.put_u32_le(s.max_staleness_ms);
                out.put_u16_le(s.features.len() as u16);
                for f in &s.features {
                    out.put_u8(f.dtype as u8);
                    put_str(out, &f.name);
                    out.put_slice(&f.default);
                }
            }
            Response::Get(g) => out.put_slice(&g.body),
            Response::Put { written } => out.put_u32_le(*written),
            Response::Error(e) => {
                out.put_u16_le(e.code as u16);
                put_str(out, &e.message);
            }
        }
        w.finish(out);
    }
}
