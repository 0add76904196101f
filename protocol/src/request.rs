//! Requests: what a client sends and the server decodes.

use bytes::{BufMut, Bytes, BytesMut};

use crate::reader::Reader;
use crate::{ErrorCode, Frame, FrameWriter, Keys, Limits, Op, ProtocolError, HEADER_LEN};

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Hello(Hello),
    Ping,
    Schema { view: String },
    Get(GetRequest),
    Put(PutRequest),
}

/// HELLO: the optional first frame of a connection (required when the server has a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub token: String,
    pub client_name: String,
}

/// GET: read the features of a batch of entities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetRequest {
    pub view_id: u16,
    /// Bit 0 ([`crate::GET_FLAG_BYPASS_CACHE`]): read from Redis even when the hot cache has the row.
    pub flags: u16,
    /// The schema the client expects; 0 skips the check.
    pub schema_id: u32,
    /// 0 means the server's default deadline.
    pub deadline_us: u32,
    /// The entity keys, in the received frame's own bytes.
    pub keys: Keys,
}

/// PUT: write rows. The entries stay encoded until the server knows the view's row length
/// (see [`PutRequest::entries`]), since the frame itself does not say where one row ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRequest {
    pub view_id: u16,
    pub schema_id: u32,
    pub n: u32,
    /// n x (key, u64 computed_at_ms, row), still encoded.
    pub encoded_entries: Bytes,
}

/// One row of a PUT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutEntry {
    pub key: Bytes,
    /// Unix milliseconds when the features were computed; ages are measured from here.
    pub computed_at_ms: u64,
    pub row: Bytes,
}

/// The decoded entries of a PUT, in order.
pub type PutEntries = Vec<PutEntry>;

impl PutRequest {
    /// Builds a PUT from entries (client side).
    pub fn new(view_id: u16, schema_id: u32, entries: &[PutEntry]) -> PutRequest {
        let size: usize = entries
            .iter()
            .map(|e| 2 + e.key.len() + 8 + e.row.len())
            .sum();
        let mut buf = BytesMut::with_capacity(size);
        for e in entries {
            buf.put_u16_le(e.key.len() as u16);
            buf.put_slice(&e.key);
            buf.put_u64_le(e.computed_at_ms);
            buf.put_slice(&e.row);
        }
        PutRequest {
            view_id,
            schema_id,
            n: entries.len() as u32,
            encoded_entries: buf.freeze(),
        }
    }

    /// Splits the entries, given the view's row length. A row of the wrong length is a BAD_ROW
    /// error naming the entity and both lengths; the frame's own bounds keep the stream in sync, so
    /// the connection stays usable. Every failure here is BAD_ROW: rows carry no length of their
    /// own, so a row of the wrong length in the middle of a PUT surfaces as a bad key or a short
    /// body further on. Keys and rows are slices of the frame.
    pub fn entries(&self, view: &str, row_bytes: usize) -> Result<PutEntries, ProtocolError> {
        let min_entry = row_bytes.saturating_add(2 + 1 + 8);
        let remaining = self.encoded_entries.len();
        if (self.n as usize).saturating_mul(min_entry) > remaining.saturating_add(min_entry) {
            // Far too short to hold n rows: say so before allocating for n.
            return Err(ProtocolError::new(
                ErrorCode::BadRow,
                format!(
                    "PUT to view {view} declares {} entities but its body of {remaining} bytes cannot hold that many rows of {row_bytes} bytes",
                    self.n
                ),
            ));
        }
        let bad_entry = |e: ProtocolError| {
            ProtocolError::new(
                ErrorCode::BadRow,
                format!(
                    "PUT to view {view}: {} (rows of this view are {row_bytes} bytes; a row of another length shifts every entry after it); nothing was written",
                    e.message
                ),
            )
        };
        let mut r = Reader::new(self.encoded_entries.clone(), "PUT body");
        let mut out = Vec::with_capacity(self.n as usize);
        for i in 0..self.n {
            let key = r.key(i).map_err(bad_entry)?;
            let computed_at_ms = r.u64("computed_at_ms").map_err(bad_entry)?;
            let last = i + 1 == self.n;
            if r.remaining() < row_bytes || (last && r.remaining() != row_bytes) {
                let got = if last {
                    r.remaining()
                } else {
                    r.remaining().min(row_bytes)
                };
                return Err(ProtocolError::new(
                    ErrorCode::BadRow,
                    format!(
                        "PUT to view {view}: entity {:?} (index {i}) has a row of {got} bytes, but rows of this view are {row_bytes} bytes; nothing was written",
                        String::from_utf8_lossy(&key)
                    ),
                ));
            }
            let row = r.bytes(row_bytes, "row")?;
            out.push(PutEntry {
                key,
                computed_at_ms,
                row,
            });
        }
        r.finish()
            .map_err(|e| ProtocolError::new(ErrorCode::BadRow, e.message))?;
        Ok(out)
    }
}

impl Request {
    /// Decodes a request frame. `UNKNOWN_OP` for an op no v1 request uses (the frame was consumed
    /// whole, so the connection stays usable); `MALFORMED` for a body that does not parse;
    /// `BATCH_TOO_LARGE` for more than `limits.max_batch` entities.
    pub fn decode(frame: &Frame, limits: &Limits) -> Result<Request, ProtocolError> {
        let op = Op::from_u8(frame.op).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::UnknownOp,
                format!(
                    "op {:#04x} is not a protocol v1 request (HELLO 0x01, PING 0x02, SCHEMA 0x03, GET 0x10, PUT 0x11)",
                    frame.op
                ),
            )
        })?;
        let mut r = Reader::new(frame.body.clone(), op.name());
        let req = match op {
            Op::Hello => Request::Hello(Hello {
                version: r.u16("version")?,
                token: r.string("token")?,
                client_name: r.string("client_name")?,
            }),
            Op::Ping => Request::Ping,
            Op::Schema => Request::Schema {
                view: r.string("view")?,
            },
            Op::Get => {
                let view_id = r.u16("view_id")?;
                let flags = r.u16("get_flags")?;
                let schema_id = r.u32("schema_id")?;
                let deadline_us = r.u32("deadline_us")?;
                let n = r.u32("n")?;
                check_batch(n, limits)?;
                // Each key takes at least 3 bytes: refuse a count the body cannot hold before
                // allocating for it.
                if n as usize > r.remaining() / 3 {
                    return Err(ProtocolError::malformed(format!(
                        "GET declares {n} keys but its remaining {} bytes cannot hold them",
                        r.remaining()
                    )));
                }
                let keys = r.keys(n)?;
                Request::Get(GetRequest {
                    view_id,
                    flags,
                    schema_id,
                    deadline_us,
                    keys,
                })
            }
            Op::Put => {
                let view_id = r.u16("view_id")?;
                let _zero = r.u16("reserved")?;
                let schema_id = r.u32("schema_id")?;
                let n = r.u32("n")?;
                check_batch(n, limits)?;
                let rest = r.remaining();
                return Ok(Request::Put(PutRequest {
                    view_id,
                    schema_id,
                    n,
                    encoded_entries: r.bytes(rest, "entries")?,
                }));
            }
        };
        r.finish()?;
        Ok(req)
    }

    pub fn op(&self) -> Op {
        match self {
            Request::Hello(_) => Op::Hello,
            Request::Ping => Op::Ping,
            Request::Schema { .. } => Op::Schema,
            Request::Get(_) => Op::Get,
            Request::Put(_) => Op::Put,
        }
    }

    /// Appends this request as one frame to `out`.
    pub fn encode(&self, out: &mut BytesMut, request_id: u32) {
        let w = FrameWriter::start(out, self.op() as u8, request_id);
        match self {
            Request::Hello(h) => {
                out.put_u16_le(h.version);
                put_str(out, &h.token);
                put_str(out, &h.client_name);
            }
            Request::Ping => {}
            Request::Schema { view } => put_str(out, view),
            Request::Get(g) => {
                out.put_u16_le(g.view_id);
                out.put_u16_le(g.flags);
                out.put_u32_le(g.schema_id);
                out.put_u32_le(g.deadline_us);
                out.put_u32_le(g.keys.len() as u32);
                for k in g.keys.iter() {
                    out.put_u16_le(k.len() as u16);
                    out.put_slice(k);
                }
            }
            Request::Put(p) => {
                out.put_u16_le(p.view_id);
                out.put_u16_le(0);
                out.put_u32_le(p.schema_id);
                out.put_u32_le(p.n);
                out.put_slice(&p.encoded_entries);
            }
        }
        w.finish(out);
    }

    /// Encodes a GET straight from borrowed keys, without building a [`GetRequest`] (client side).
    pub fn encode_get<K: AsRef<[u8]>>(
        out: &mut BytesMut,
        request_id: u32,
        view_id: u16,
        flags: u16,
        schema_id: u32,
        deadline_us: u32,
        keys: &[K],
    ) {
        // All the room at once: grown put by put from an empty buffer (the client's case), the
        // frame cost several reallocations and copies.
        let key_bytes: usize = keys.iter().map(|k| 2 + k.as_ref().len()).sum();
        out.reserve(HEADER_LEN + 16 + key_bytes);
        let w = FrameWriter::start(out, Op::Get as u8, request_id);
        out.put_u16_le(view_id);
        out.put_u16_le(flags);
        out.put_u32_le(schema_id);
        out.put_u32_le(deadline_us);
        out.put_u32_le(keys.len() as u32);
        // The keys written into their sized room: a `put` per length and per key checked the
        // room and called memcpy twice per key (about 100 instructions a key; callgrind).
        let start = out.len();
        out.resize(start + key_bytes, 0);
        let mut at = &mut out[start..];
        for k in keys {
            let k = k.as_ref();
            let (len, rest) = at.split_at_mut(2);
            len.copy_from_slice(&(k.len() as u16).to_le_bytes());
            let (key, rest) = rest.split_at_mut(k.len());
            key.copy_from_slice(k);
            at = rest;
        }
        w.finish(out);
    }
}

fn check_batch(n: u32, limits: &Limits) -> Result<(), ProtocolError> {
    if n > limits.max_batch {
        return Err(ProtocolError::new(
            ErrorCode::BatchTooLarge,
            format!(
                "batch of {n} entities exceeds this server's max_batch of {}; split it into smaller requests",
                limits.max_batch
            ),
        ));
    }
    Ok(())
}

/// Writes a `str`. Text past the 65,535 bytes a `str` can hold is cut at a character boundary;
/// only messages can be that long, and a cut message beats a corrupt frame.
pub(crate) fn put_str(out: &mut BytesMut, s: &str) {
    let mut len = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(len) {
        len -= 1;
    }
    out.put_u16_le(len as u16);
    out.put_slice(&s.as_bytes()[..len]);
}
