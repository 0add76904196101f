//! Store keys as the read path carries them. A read of a hundred entities makes up to a hundred
//! keys, and each key is queued, kept while its read is in flight, compared when another request
//! asks for it and split off by node on a cluster. As `Bytes` sliced from one buffer, each of
//! those steps was an atomic count on that buffer (on the store's cold path, 6-9% of the proxy's
//! samples at batch 100). A shard's keys never leave its thread, so here the keys of one read
//! share one buffer under a plain count instead: a [`KeyBlock`] builds them, [`StoreKey`]s share
//! it.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::{Deref, Range};
use std::rc::Rc;

use super::{Layout, ReadCommand, ReadKey};

/// A key in the store: a range of a buffer that the keys of one read share. Clones count without
/// atomics; compares, hashes and reads as its bytes.
#[derive(Clone)]
pub struct StoreKey {
    buf: Rc<[u8]>,
    start: usize,
    end: usize,
}

impl StoreKey {
    fn new(buf: &Rc<[u8]>, range: Range<usize>) -> StoreKey {
        StoreKey {
            buf: buf.clone(),
            start: range.start,
            end: range.end,
        }
    }
}

impl From<&[u8]> for StoreKey {
    /// A key with a buffer of its own.
    fn from(key: &[u8]) -> StoreKey {
        let buf: Rc<[u8]> = Rc::from(key);
        let end = buf.len();
        StoreKey { buf, start: 0, end }
    }
}

impl Deref for StoreKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

impl PartialEq for StoreKey {
    fn eq(&self, other: &StoreKey) -> bool {
        **self == **other
    }
}

impl Eq for StoreKey {}

impl Hash for StoreKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

/// Builds the reads of many entities with their keys in one buffer, then hands them out sharing
/// one copy of it. Kept and reused by its owner, so building allocates only when a read has more
/// key bytes than any before it (and once per read for the shared copy).
#[derive(Debug, Default)]
pub struct KeyBlock {
    bytes: Vec<u8>,
    reads: Vec<(Range<usize>, ReadCommand)>,
}

impl KeyBlock {
    /// Adds the read of `entity` in `layout`; false (and nothing added) when `entity` cannot be a
    /// key of the view.
    pub fn push(&mut self, layout: &Layout, entity: &[u8]) -> bool {
        let start = self.bytes.len();
        let Some(command) = layout.read_key_into(&mut self.bytes, entity) else {
            self.bytes.truncate(start);
            return false;
        };
        self.reads.push((start..self.bytes.len(), command));
        true
    }

    /// The reads added, in order; the block is empty afterwards, ready for the next.
    pub fn drain(&mut self) -> impl Iterator<Item = ReadKey> + '_ {
        let buf: Rc<[u8]> = Rc::from(&self.bytes[..]);
        self.bytes.clear();
        self.reads.drain(..).map(move |(range, command)| ReadKey {
            key: StoreKey::new(&buf, range),
            command,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::layout::Packed;

    #[test]
    fn keys_of_one_block_read_as_their_own_bytes_and_equal_keys_made_alone() {
        let layout = Layout::Packed(Packed::new("user_features", 1, 64, Duration::from_secs(1)));
        let mut block = KeyBlock::default();
        assert!(block.push(&layout, b"u1"));
        assert!(block.push(&layout, b"user-22"));
        let keys: Vec<ReadKey> = block.drain().collect();
        assert_eq!(&keys[0].key[..], b"fp:user_features:v1:u1");
        assert_eq!(&keys[1].key[..], b"fp:user_features:v1:user-22");
        let alone = StoreKey::from(&b"fp:user_features:v1:u1"[..]);
        assert_eq!(keys[0].key, alone);
        let hash = |k: &StoreKey| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            k.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&keys[0].key), hash(&alone));
        assert_ne!(keys[0].key, keys[1].key);

        // Reused: the next read's keys start afresh, and the first read's keep their bytes.
        assert!(block.push(&layout, b"u3"));
        let next: Vec<ReadKey> = block.drain().collect();
        assert_eq!(next.len(), 1);
        assert_eq!(&next[0].key[..], b"fp:user_features:v1:u3");
        assert_eq!(&keys[1].key[..], b"fp:user_features:v1:user-22");
    }
}
