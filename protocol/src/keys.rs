//! The entity keys of a GET, as they arrived: one handle on the frame's bytes and where each
//! key lies in them (no copy). A server reads a batch of a hundred keys without a
//! reference-counted handle per key (each costs an atomic increment when made and a decrement
//! when dropped: ~6% of the proxy's CPU at 100 keys per GET).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// A batch of entity keys: bytes that hold all of them, and where each one lies in those bytes.
#[derive(Clone, Default)]
pub struct Keys {
    buf: Bytes,
    /// Where each key lies in `buf`: start and end.
    spans: Vec<(u32, u32)>,
}

impl Keys {
    /// Keys at `spans` of `buf`. The decoder has checked every span lies within `buf`.
    pub(crate) fn from_parts(buf: Bytes, spans: Vec<(u32, u32)>) -> Keys {
        debug_assert!(spans
            .iter()
            .all(|&(s, e)| s <= e && e as usize <= buf.len()));
        Keys { buf, spans }
    }

    /// Keys copied from borrowed ones (clients and tests build requests this way).
    pub fn from_slices<K: AsRef<[u8]>>(keys: &[K]) -> Keys {
        let mut buf = BytesMut::with_capacity(keys.iter().map(|k| k.as_ref().len()).sum());
        let mut spans = Vec::with_capacity(keys.len());
        for k in keys {
            let start = buf.len() as u32;
            buf.put_slice(k.as_ref());
            spans.push((start, buf.len() as u32));
        }
        Keys {
            buf: buf.freeze(),
            spans,
        }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Key `i`. Panics past the last key, as slice indexing does.
    pub fn get(&self, i: usize) -> &[u8] {
        let (start, end) = self.spans[i];
        &self.buf[start as usize..end as usize]
    }

    /// Every key, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.spans
            .iter()
            .map(|&(start, end)| &self.buf[start as usize..end as usize])
    }
}

impl PartialEq for Keys {
    /// The same keys in the same order, wherever their bytes lie.
    fn eq(&self, other: &Keys) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Keys {}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|k| String::from_utf8_lossy(k)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_back_as_given() {
        let keys = Keys::from_slices(&["a", "bcd", "", "ef"]);
        assert_eq!(keys.len(), 4);
        let got: Vec<&[u8]> = keys.iter().collect();
        assert_eq!(got, [&b"a"[..], b"bcd", b"", b"ef"]);
        assert_eq!(keys.get(3), b"ef");
        assert!(Keys::default().is_empty());
    }
}
