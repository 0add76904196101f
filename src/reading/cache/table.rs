//! The cache's index: which slot holds a key, found by the key's hash.
//!
//! Open addressing with linear probing over 8-byte entries, each the slot and 32 bits of the
//! hash (the tag). A lookup reads one cache line in the common case, where hashbrown's table
//! reads two (its control bytes and its buckets are apart), and the line is known from the hash
//! alone, so a batch of lookups can ask the CPU for all their lines first ([`Table::prefetch`])
//! and find them loaded when it probes. The home bucket comes from the tag too, so growing and
//! deleting never need the full hash (nor the slot it would be read from). Deletion shifts the
//! entries behind back into the hole, so no tombstones pile up. At most half full.

use super::batch::prefetch;

/// One bucket: a slot and its key's tag, or empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u32,
    slot: u32,
}

const EMPTY: Entry = Entry {
    tag: 0,
    slot: u32::MAX,
};

/// The 32 bits of a key's hash that the table keeps and places by.
pub(super) fn tag_of(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// The index: slot by hash.
pub(super) struct Table {
    buckets: Box<[Entry]>,
    mask: usize,
    len: usize,
}

impl Table {
    pub(super) fn new() -> Table {
        Table::with_buckets(16)
    }

    fn with_buckets(n: usize) -> Table {
        Table {
            buckets: vec![EMPTY; n].into_boxed_slice(),
            mask: n - 1,
            len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn home(&self, tag: u32) -> usize {
        tag as usize & self.mask
    }

    /// Starts loading the line where a lookup of `hash` begins.
    pub(super) fn prefetch(&self, hash: u64) {
        prefetch(&self.buckets[self.home(tag_of(hash))]);
    }

    /// The first slot whose tag is `hash`'s and for which `is(slot)` holds.
    pub(super) fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let tag = tag_of(hash);
        let mut i = self.home(tag);
        loop {
            let e = self.buckets[i];
            if e == EMPTY {
                return None;
            }
            if e.tag == tag && is(e.slot) {
                return Some(e.slot);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Adds `slot` under `hash` (the caller knows the key is not in the table).
    pub(super) fn insert(&mut self, hash: u64, slot: u32) {
        if 2 * (self.len + 1) > self.buckets.len() {
            self.grow();
        }
        self.place(Entry {
            tag: tag_of(hash),
            slot,
        });
        self.len += 1;
    }

    fn place(&mut self, e: Entry) {
        let mut i = self.home(e.tag);
        while self.buckets[i] != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = e;
    }

    fn grow(&mut self) {
        let old = std::mem::replace(self, Table::with_buckets(self.buckets.len() * 2));
        for e in old.buckets.iter().filter(|e| **e != EMPTY) {
            self.place(*e);
        }
        self.len = old.len;
    }

    /// Removes `slot`, filed under `hash`. Returns whether it was there.
    pub(super) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let mut i = self.home(tag_of(hash));
        loop {
            let e = self.buckets[i];
            if e == EMPTY {
                return false;
            }
            if e.slot == slot {
                break;
            }
            i = (i + 1) & self.mask;
        }
        // Shift back every entry of the run behind the hole that may sit in it: one whose home
        // is not between the hole and itself.
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let e = self.buckets[j];
            if e == EMPTY {
                break;
            }
            let from_home = j.wrapping_sub(self.home(e.tag)) & self.mask;
            let from_hole = j.wrapping_sub(hole) & self.mask;
            if from_home >= from_hole {
                self.buckets[hole] = e;
                hole = j;
            }
        }
        self.buckets[hole] = EMPTY;
        self.len -= 1;
        true
    }

    /// Bytes held, for the overhead test.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.buckets)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A hash whose tag has few distinct values, so that runs collide, wrap around the end and
    /// shift on removal.
    fn crowded(key: u32) -> u64 {
        ((key % 40) as u64) << 32 | key as u64
    }

    #[test]
    fn agrees_with_a_hash_map_through_inserts_and_removals() {
        for hash_of in [crowded as fn(u32) -> u64, |k: u32| {
            (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        }] {
            let mut t = Table::new();
            let mut model: HashMap<u32, u32> = HashMap::new(); // key -> slot
            let mut seed = 5u64;
            for step in 0..20_000u32 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let key = ((seed >> 33) % 300) as u32;
                let h = hash_of(key);
                let found = t.find(h, |slot| model.get(&key) == Some(&slot));
                assert_eq!(found, model.get(&key).copied(), "step {step}, key {key}");
                match (found, seed >> 62) {
                    (Some(slot), 0 | 1) => {
                        assert!(t.remove(h, slot));
                        model.remove(&key);
                    }
                    (None, _) => {
                        t.insert(h, step);
                        model.insert(key, step);
                    }
                    _ => {}
                }
                assert_eq!(t.len(), model.len());
                assert!(2 * t.len() <= t.buckets.len(), "at most half full");
            }
            for (key, slot) in &model {
                assert_eq!(t.find(hash_of(*key), |s| s == *slot), Some(*slot));
            }
        }
    }

    #[test]
    fn removing_what_is_not_there_changes_nothing() {
        let mut t = Table::new();
        t.insert(crowded(1), 10);
        t.insert(crowded(41), 11); // the same home and tag as 1
        assert!(!t.remove(crowded(1), 12));
        assert_eq!(t.len(), 2);
        assert!(t.remove(crowded(1), 10));
        assert_eq!(
            t.find(crowded(41), |s| s == 11),
            Some(11),
            "shifted, still found"
        );
        assert_eq!(
            t.find(crowded(1), |_| true),
            Some(11),
            "the tag alone matches 41"
        );
        assert_eq!(t.find(crowded(1), |s| s == 10), None);
    }
}
