//! Checked little-endian reads over a frame body. Every read checks what remains first, so a
//! length on the wire can never make us read past the frame or allocate for bytes we don't have.

use bytes::{Buf, Bytes};

use crate::{Keys, ProtocolError, MAX_KEY_LEN};

pub(crate) struct Reader {
    buf: Bytes,
    /// What the body is, for error messages ("GET body", "SCHEMA reply").
    what: &'static str,
    start_len: usize,
}

impl Reader {
    pub(crate) fn new(buf: Bytes, what: &'static str) -> Self {
        let start_len = buf.len();
        Reader {
            buf,
            what,
            start_len,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Offset from the start of the body of the next byte to read.
    pub(crate) fn position(&self) -> usize {
        self.start_len - self.buf.len()
    }

    fn need(&self, n: usize, field: &str) -> Result<(), ProtocolError> {
        if self.buf.len() < n {
            return Err(ProtocolError::malformed(format!(
                "{} ends early: {field} needs {n} bytes at body offset {} but only {} remain",
                self.what,
                self.position(),
                self.buf.len()
            )));
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self, field: &str) -> Result<u8, ProtocolError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, field: &str) -> Result<u16, ProtocolError> {
        self.need(2, field)?;
        Ok(self.buf.get_u16_le())
    }

    pub(crate) fn u32(&mut self, field: &str) -> Result<u32, ProtocolError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32_le())
    }

    pub(crate) fn u64(&mut self, field: &str) -> Result<u64, ProtocolError> {
        self.need(8, field)?;
        Ok(self.buf.get_u64_le())
    }

    /// The next `n` bytes, as a slice of the frame (no copy).
    pub(crate) fn bytes(&mut self, n: usize, field: &str) -> Result<Bytes, ProtocolError> {
        self.need(n, field)?;
        Ok(self.buf.split_to(n))
    }

    /// A `str`: u16 length, then that many bytes of UTF-8.
    pub(crate) fn string(&mut self, field: &str) -> Result<String, ProtocolError> {
        let len = self.u16(field)? as usize;
        let raw = self.bytes(len, field)?;
        String::from_utf8(raw.to_vec()).map_err(|_| {
            ProtocolError::malformed(format!("{}: {field} is not valid UTF-8", self.what))
        })
    }

    /// A `key`: u16 length in 1..=1024, then that many arbitrary bytes (a slice, no copy).
    pub(crate) fn key(&mut self, index: u32) -> Result<Bytes, ProtocolError> {
        let len = self.key_len(index)?;
        self.bytes(len, "key")
    }

    /// A key's u16 length, checked to be in 1..=1024.
    fn key_len(&mut self, index: u32) -> Result<usize, ProtocolError> {
        let len = self.u16("key length")? as usize;
        if len == 0 || len > MAX_KEY_LEN {
            return Err(ProtocolError::malformed(format!(
                "{}: key {index} is {len} bytes long; keys must be 1 to {MAX_KEY_LEN} bytes",
                self.what
            )));
        }
        Ok(len)
    }

    /// `n` keys in a row, checked as [`Self::key`] checks one: one handle on the frame's bytes
    /// and where each key lies in them, instead of a handle per key.
    pub(crate) fn keys(&mut self, n: u32) -> Result<Keys, ProtocolError> {
        let region = self.buf.clone();
        let mut spans = Vec::with_capacity(n as usize);
        // The common case, well-formed keys, in a tight loop over the bytes; anything amiss is
        // found again by the checked reads below, which say exactly what and where.
        let body = &region[..];
        let mut at = 0;
        for _ in 0..n {
            let Some(&[lo, hi]) = body.get(at..at + 2) else {
                break;
            };
            let len = u16::from_le_bytes([lo, hi]) as usize;
            if len == 0 || len > MAX_KEY_LEN || at + 2 + len > body.len() {
                break;
            }
            spans.push((at as u32 + 2, (at + 2 + len) as u32));
            at += 2 + len;
        }
        if spans.len() == n as usize {
            self.buf.advance(at);
            return Ok(Keys::from_parts(region, spans));
        }
        for i in 0..n {
            self.key(i)?;
        }
        // Not reached: the checked reads refuse what the scan refused. Should they ever
        // disagree, the frame is refused, never served wrong.
        Err(ProtocolError::malformed(format!(
            "{}: key {} could not be read",
            self.what,
            spans.len()
        )))
    }

    /// Fails unless the body was read to its last byte.
    pub(crate) fn finish(self) -> Result<(), ProtocolError> {
        if !self.buf.is_empty() {
            return Err(ProtocolError::malformed(format!(
                "{} has {} unexpected trailing bytes after its last field",
                self.what,
                self.buf.len()
            )));
        }
        Ok(())
    }
}
