//! Frame boundaries: the 12-byte header and the body it delimits.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{ErrorCode, ProtocolError, HEADER_LEN, MIN_LEN};

/// One frame, split off the receive buffer. `body` is a slice of that buffer, not a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub op: u8,
    pub flags: u8,
    pub request_id: u32,
    pub body: Bytes,
}

/// The op of the frame at the front of `buf`, once its header has arrived (a server deciding
/// whether it may still take the frame, before decoding it).
pub fn peek_op(buf: &[u8]) -> Option<u8> {
    buf.get(4).copied()
}

/// Splits the next whole frame off the front of `buf`.
///
/// Returns `Ok(None)` while the frame is incomplete (read more and call again). The header is
/// judged as soon as its 12 bytes are in, so an oversized `len` is refused before its body is
/// waited for or buffered. On error the `u32` is the request id to answer with (0 when the header
/// was too short to carry one); the caller should answer and close, as the stream is out of sync.
pub fn decode_frame(
    buf: &mut BytesMut,
    max_frame: u32,
) -> Result<Option<Frame>, (u32, ProtocolError)> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < MIN_LEN {
        return Err((
            0,
            ProtocolError::malformed(format!(
                "frame length {len} is below the minimum of {MIN_LEN} (op, flags, reserved, request_id)"
            )),
        ));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let request_id = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if len > max_frame {
        return Err((
            request_id,
            ProtocolError::new(
                ErrorCode::FrameTooLarge,
                format!(
                    "frame length {len} exceeds this server's max_frame of {max_frame} bytes; split the batch"
                ),
            ),
        ));
    }
    let (flags, reserved) = (buf[5], u16::from_le_bytes([buf[6], buf[7]]));
    if flags != 0 || reserved != 0 {
        return Err((
            request_id,
            ProtocolError::malformed(format!(
                "header flags {flags:#04x} and reserved {reserved:#06x} must both be 0 in protocol v1"
            )),
        ));
    }
    let total = 4 + len as usize;
    if buf.len() < total {
        // Not reserving `total` here on purpose: a peer that announces 4 MiB and sends nothing
        // must not cost 4 MiB per connection. The reader grows the buffer as bytes arrive.
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(4);
    let op = frame.get_u8();
    frame.advance(3);
    let request_id = frame.get_u32_le();
    Ok(Some(Frame {
        op,
        flags,
        request_id,
        body: frame,
    }))
}

/// Writes one frame with a body already encoded.
pub fn encode_frame(out: &mut BytesMut, op: u8, request_id: u32, body: &[u8]) {
    let w = FrameWriter::start(out, op, request_id);
    out.put_slice(body);
    w.finish(out);
}

/// Encodes a frame in place: reserves the header, lets the caller append the body, then patches
/// the length. Saves building the body in a buffer of its own and copying it.
#[must_use = "call finish() to write the frame length"]
pub struct FrameWriter {
    start: usize,
}

impl FrameWriter {
    pub fn start(out: &mut BytesMut, op: u8, request_id: u32) -> FrameWriter {
        let start = out.len();
        out.put_u32_le(0);
        out.put_u8(op);
        out.put_u8(0);
        out.put_u16_le(0);
        out.put_u32_le(request_id);
        FrameWriter { start }
    }

    /// Offset of the frame's first byte in `out`; the spec's "offsets" count from here.
    pub fn frame_start(&self) -> usize {
        self.start
    }

    pub fn finish(self, out: &mut BytesMut) {
        let len = (out.len() - self.start - 4) as u32;
        out[self.start..self.start + 4].copy_from_slice(&len.to_le_bytes());
    }
}
