//! The result of a GET: statuses, ages and an n x row_bytes matrix, read in place.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use featureproxy_protocol::{
    EntityStatus, ErrorCode, Frame, GetResponse, Limits, Op, ProtocolError, Response, AGE_UNKNOWN,
    HEADER_LEN,
};

use crate::{Error, Schema, Value};

/// The answer to one GET: for each requested key, in request order, a status, an age and a row.
///
/// A `Batch` keeps the received frame and reads from it in place; nothing is copied per row.
/// Every entity has a row, even those the server had no value for: they carry the view's defaults
/// and a status saying why ([`featureproxy_protocol::Status::is_default`]).
///
/// # Memory layout
///
/// The rows form one contiguous block, [`Batch::matrix_bytes`], of `len() x row_bytes` bytes,
/// row-major, features packed in schema order, little-endian. The protocol puts the block at an
/// 8-byte boundary of the frame, and the client keeps every GET frame at an 8-byte-aligned
/// address (copying it once in the rare case the read buffer left it misaligned), so the block
/// starts 8-byte aligned in memory: an all-`f32` view can be viewed as `&[f32]` without a copy
/// ([`Batch::as_f32_matrix`]).
#[derive(Debug, Clone)]
pub struct Batch {
    schema: Arc<Schema>,
    resp: GetResponse,
}

impl Batch {
    /// Decodes a GET reply frame for a request of `n` keys against `schema`. Frames that arrive
    /// misaligned are copied into an aligned buffer first (see the type's docs).
    pub(crate) fn from_frame(
        schema: Arc<Schema>,
        mut frame: Frame,
        n: usize,
        limits: &Limits,
    ) -> Result<Batch, Error> {
        if frame.op == Op::Get.response() {
            frame.body = align_get_body(frame.body);
        }
        match Response::decode(&frame, limits)? {
            Response::Get(resp) => Batch::from_response(schema, resp, n),
            Response::Error(e) => Err(Error::from_server(e)),
            other => Err(unexpected("GET", &other)),
        }
    }

    /// Wraps a decoded reply, checking that it answers a request of `n` keys against `schema`.
    pub(crate) fn from_response(
        schema: Arc<Schema>,
        resp: GetResponse,
        n: usize,
    ) -> Result<Batch, Error> {
        if resp.schema_id != schema.schema_id() {
            return Err(Error::Protocol(ProtocolError::new(
                ErrorCode::SchemaMismatch,
                format!(
                    "GET reply for view {} carries schema {:#010x}, the client expected {:#010x}",
                    schema.name(),
                    resp.schema_id,
                    schema.schema_id()
                ),
            )));
        }
        if resp.n as usize != n || resp.row_bytes as usize != schema.row_bytes() {
            return Err(Error::Protocol(ProtocolError::malformed(format!(
                "GET reply for view {} has {} rows of {} bytes; the request had {n} keys and rows are {} bytes",
                schema.name(),
                resp.n,
                resp.row_bytes,
                schema.row_bytes()
            ))));
        }
        Ok(Batch { schema, resp })
    }

    /// Number of entities (the number of keys requested).
    pub fn len(&self) -> usize {
        self.resp.n as usize
    }

    /// True for the answer to an empty GET.
    pub fn is_empty(&self) -> bool {
        self.resp.n == 0
    }

    /// The schema the rows follow.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// Status of entity `i`: fresh, stale or why it got the defaults, and whether the proxy's hot
    /// cache served it.
    ///
    /// # Panics
    /// If `i >= len()`, like slice indexing.
    pub fn status(&self, i: usize) -> EntityStatus {
        self.resp.status(i)
    }

    /// Age of entity `i`'s value (time since its `computed_at`), or `None` when the server found
    /// no value for it.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn age(&self, i: usize) -> Option<Duration> {
        let ms = self.resp.age_ms(i);
        (ms != AGE_UNKNOWN).then(|| Duration::from_millis(ms as u64))
    }

    /// Entity `i`'s row decoded into one value per feature.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn row(&self, i: usize) -> Vec<Value> {
        self.schema.decode_row(self.raw_row(i))
    }

    /// The value of feature `name` for entity `i`; `None` when the view has no such feature or
    /// `i` is out of range.
    pub fn value(&self, i: usize, name: &str) -> Option<Value> {
        if i >= self.len() {
            return None;
        }
        let f = self.schema.feature_index(name)?;
        self.schema.decode_value(self.raw_row(i), f)
    }

    /// Entity `i`'s row as bytes: `row_bytes` long, packed little-endian features.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn raw_row(&self, i: usize) -> &[u8] {
        self.resp.row(i)
    }

    /// All rows: one contiguous, row-major `len() x row_bytes` block, starting 8-byte aligned.
    pub fn matrix_bytes(&self) -> &[u8] {
        self.resp.matrix()
    }

    /// The same block as [`Bytes`] sharing the received buffer, to hand to another thread or
    /// keep beyond the `Batch` without a copy.
    pub fn matrix_shared(&self) -> Bytes {
        self.resp.matrix_bytes()
    }

    /// The rows as a row-major `len() x k` matrix of `f32`, without a copy.
    ///
    /// `Some` when the view is all `f32` ([`Schema::all_f32`]), the target is little-endian (the
    /// wire format is) and the block is 4-byte aligned in memory, which the client arranges for
    /// every batch it returns. When it returns `None` for an all-`f32` view,
    /// [`Batch::to_f32_matrix`] still works, at the price of a copy.
    pub fn as_f32_matrix(&self) -> Option<&[f32]> {
        if !self.schema.all_f32() {
            return None;
        }
        f32_view(self.matrix_bytes())
    }

    /// The rows as a row-major `len() x k` matrix of `f32`, copied. `Some` for every all-`f32`
    /// view, whatever the alignment or endianness.
    pub fn to_f32_matrix(&self) -> Option<Vec<f32>> {
        if !self.schema.all_f32() {
            return None;
        }
        Some(
            self.matrix_bytes()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }

    /// The decoded reply itself, for anything the accessors above do not cover.
    pub fn response(&self) -> &GetResponse {
        &self.resp
    }
}

pub(crate) fn unexpected(op: &str, got: &Response) -> Error {
    let what = match got {
        Response::Hello(_) => "HELLO",
        Response::Pong => "PING",
        Response::Schema(_) => "SCHEMA",
        Response::Get(_) => "GET",
        Response::Put { .. } => "PUT",
        Response::Error(_) => "ERROR",
    };
    Error::Protocol(ProtocolError::malformed(format!(
        "the server answered a {op} request with a {what} reply"
    )))
}

/// Views little-endian `f32` bytes as `&[f32]` when the address is 4-byte aligned, the length a
/// multiple of 4 and the target little-endian; `None` otherwise.
pub(crate) fn f32_view(bytes: &[u8]) -> Option<&[f32]> {
    if cfg!(target_endian = "big")
        || bytes.len() % 4 != 0
        || bytes.as_ptr() as usize % std::mem::align_of::<f32>() != 0
    {
        return None;
    }
    // SAFETY: the pointer is non-null and aligned for f32 (checked above), the region is
    // `bytes.len()` initialised bytes borrowed for the returned lifetime, so `len / 4` f32s fit
    // exactly, and every bit pattern is a valid f32. The target is little-endian, as the wire is.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), bytes.len() / 4) })
}

/// Returns a GET reply body whose frame starts at an 8-byte-aligned address, so that the rows
/// (at an 8-byte boundary of the frame) are aligned too. The body starts `HEADER_LEN` (12) bytes
/// into the frame, so it must sit at 4 mod 8. Already-aligned bodies are returned as they are;
/// others are copied once into an 8-byte-aligned allocation.
pub(crate) fn align_get_body(body: Bytes) -> Bytes {
    const LEAD: usize = HEADER_LEN % 8;
    if body.as_ptr() as usize % 8 == LEAD {
        return body;
    }
    Bytes::from_owner(Aligned::copy_of(&body, LEAD))
}

/// Bytes stored in `u64`s, so that byte 0 of the allocation is 8-byte aligned.
struct Aligned {
    words: Vec<u64>,
    start: usize,
    len: usize,
}

impl Aligned {
    /// Copies `data` so that it starts `lead` bytes into an 8-aligned allocation.
    fn copy_of(data: &[u8], lead: usize) -> Aligned {
        let total = lead + data.len();
        let mut words = Vec::with_capacity(total.div_ceil(8));
        // Fill word by word without unsafe: a word's native-endian bytes are exactly the bytes it
        // occupies in memory.
        let mut chunk = [0u8; 8];
        let mut fill = lead;
        for &b in data {
            chunk[fill] = b;
            fill += 1;
            if fill == 8 {
                words.push(u64::from_ne_bytes(chunk));
                chunk = [0u8; 8];
                fill = 0;
            }
        }
        if fill != 0 {
            words.push(u64::from_ne_bytes(chunk));
        }
        Aligned {
            words,
            start: lead,
            len: data.len(),
        }
    }
}

impl AsRef<[u8]> for Aligned {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: a Vec<u64>'s buffer is `len * 8` initialised bytes, valid for reads for as long
        // as `self` is borrowed; u8 has no alignment requirement.
        let all = unsafe {
            std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.words.len() * 8)
        };
        &all[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::tests::{mixed_reply, spec};
    use bytes::{BufMut, BytesMut};
    use featureproxy_protocol::{
        decode_frame, encode_get_response, Dtype, SchemaReply, Status, DEFAULT_MAX_FRAME,
    };

    fn f32_schema(k: usize) -> Arc<Schema> {
        let features = (0..k)
            .map(|j| spec(Dtype::F32, &format!("f{j}"), Value::F32(-1.0)))
            .collect();
        let reply = SchemaReply {
            view_id: 1,
            schema_id: 42,
            row_bytes: 4 * k as u32,
            stale_after_ms: 1000,
            max_staleness_ms: 2000,
            features,
        };
        Arc::new(Schema::new("emb", reply).unwrap())
    }

    /// Encodes a GET reply and decodes its frame from a buffer in which it starts `shift` bytes
    /// past an 8-byte boundary.
    fn frame_at(schema: &Schema, rows: &[Vec<u8>], shift: usize) -> Frame {
        let n = rows.len();
        let statuses: Vec<EntityStatus> = (0..n)
            .map(|i| {
                EntityStatus::new(
                    if i % 2 == 0 {
                        Status::Fresh
                    } else {
                        Status::Missing
                    },
                    i == 0,
                )
            })
            .collect();
        let ages: Vec<u32> = (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    10 * i as u32
                } else {
                    AGE_UNKNOWN
                }
            })
            .collect();
        let mut enc = BytesMut::new();
        encode_get_response(
            &mut enc,
            9,
            schema.view_id(),
            schema.schema_id(),
            schema.row_bytes() as u32,
            &statuses,
            &ages,
            rows.iter().map(|r| r.as_slice()),
        );
        // Place the frame at a chosen distance from an 8-aligned address.
        let mut buf = BytesMut::with_capacity(enc.len() + 16);
        let pad = (8 - buf.as_ptr() as usize % 8) % 8 + shift;
        buf.put_bytes(0, pad);
        buf.put_slice(&enc);
        let _ = buf.split_to(pad);
        assert_eq!(buf.as_ptr() as usize % 8, shift);
        decode_frame(&mut buf, DEFAULT_MAX_FRAME).unwrap().unwrap()
    }

    fn f32_rows(n: usize, k: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                (0..k)
                    .flat_map(|j| ((i * 100 + j) as f32).to_le_bytes())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn f32_matrix_is_zero_copy_and_realigned() {
        let schema = f32_schema(3);
        let rows = f32_rows(5, 3);
        let expect: Vec<f32> = (0..5)
            .flat_map(|i| (0..3).map(move |j| (i * 100 + j) as f32))
            .collect();
        for shift in 0..8 {
            let frame = frame_at(&schema, &rows, shift);
            // Where the matrix sits in the received buffer.
            let in_place = frame.body.as_ptr() as usize + frame.body.len() - 5 * 12;
            let b = Batch::from_frame(schema.clone(), frame, 5, &Limits::default()).unwrap();
            let m = b.matrix_bytes();
            assert_eq!(m.as_ptr() as usize % 8, 0, "shift {shift}");
            // An aligned frame is used in place; a misaligned one is copied once.
            assert_eq!(m.as_ptr() as usize == in_place, shift == 0, "shift {shift}");
            assert_eq!(b.as_f32_matrix(), Some(&expect[..]), "shift {shift}");
            assert_eq!(b.to_f32_matrix(), Some(expect.clone()));
            assert_eq!(b.len(), 5);
            assert_eq!(b.status(0), EntityStatus::new(Status::Fresh, true));
            assert_eq!(b.status(1).status, Status::Missing);
            assert_eq!(b.age(2), Some(Duration::from_millis(20)));
            assert_eq!(b.age(1), None);
            assert_eq!(b.value(4, "f2"), Some(Value::F32(402.0)));
            assert_eq!(b.value(5, "f2"), None);
            assert_eq!(b.value(0, "zz"), None);
            assert_eq!(
                b.row(1),
                vec![Value::F32(100.0), Value::F32(101.0), Value::F32(102.0)]
            );
        }
    }

    #[test]
    fn f32_view_refuses_misaligned_slices() {
        let words = [0u64; 4];
        // SAFETY: viewing initialised u64s as bytes.
        let bytes = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), 32) };
        assert_eq!(f32_view(&bytes[..16]).map(<[f32]>::len), Some(4));
        assert_eq!(f32_view(&bytes[4..20]).map(<[f32]>::len), Some(4));
        assert!(f32_view(&bytes[1..17]).is_none());
        assert!(f32_view(&bytes[2..18]).is_none());
        assert!(
            f32_view(&bytes[0..15]).is_none(),
            "length not a multiple of 4"
        );
        assert_eq!(f32_view(&bytes[..0]).map(<[f32]>::len), Some(0));
    }

    #[test]
    fn mixed_view_has_no_f32_matrix() {
        let schema = Arc::new(Schema::new("user", mixed_reply()).unwrap());
        let row = schema
            .encode_row(&[
                Value::F32(1.0),
                Value::Bool(true),
                Value::I64(5),
                Value::F64(2.0),
                Value::I32(3),
            ])
            .unwrap()
            .to_vec();
        let frame = frame_at(&schema, &[row.clone(), row], 3);
        let b = Batch::from_frame(schema.clone(), frame, 2, &Limits::default()).unwrap();
        assert!(b.as_f32_matrix().is_none());
        assert!(b.to_f32_matrix().is_none());
        assert_eq!(b.matrix_bytes().len(), 2 * 25);
        assert_eq!(b.value(1, "clicks"), Some(Value::I64(5)));
        assert_eq!(b.row(0)[4], Value::I32(3));
    }

    #[test]
    fn reply_must_match_the_request() {
        let schema = f32_schema(2);
        let frame = frame_at(&schema, &f32_rows(3, 2), 0);
        let err = Batch::from_frame(schema.clone(), frame, 4, &Limits::default()).unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err}");
        let other = f32_schema(3);
        let frame = frame_at(&schema, &f32_rows(3, 2), 0);
        let err = Batch::from_frame(other, frame, 3, &Limits::default()).unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err}");
    }

    #[test]
    fn aligned_copy_keeps_the_bytes() {
        let data: Vec<u8> = (0..=250u8).collect();
        for lead in 0..8 {
            let a = Aligned::copy_of(&data, lead);
            assert_eq!(a.as_ref(), &data[..]);
            assert_eq!(a.as_ref().as_ptr() as usize % 8, lead);
        }
        let empty = Aligned::copy_of(&[], 4);
        assert!(empty.as_ref().is_empty());
    }
}
