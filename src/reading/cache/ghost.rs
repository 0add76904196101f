//! S3-FIFO's ghost: the keys recently dropped from the small FIFO, so that one coming back soon
//! goes straight to the main FIFO.
//!
//! A list and a hash set would cost two or three cache misses per eviction and per insert. This
//! is a direct-mapped array of 32-bit fingerprints instead: a key's hash picks one place, which
//! holds the fingerprint of the last key dropped there. Remembering is one store; asking is one
//! load. Forgetting is by overwriting, so memory fades instead of ending at a fixed length. The
//! cache gives it a quarter to a half as many places as it holds entries: on Zipf 0.99
//! (`cargo bench --bench cache_hit_ratio`) that hit 65.0% where a list as long as the cache hit
//! 64.6%; as many places as entries hit 64.3%, twice as many 63.8% (remembering longer sends
//! more keys to main on one return, and they displace keys that earned their place). A wrong "yes" needs the same place and the same 32 bits:
//! about one in four billion, and it only promotes one key early.

/// The ghost filter: fingerprints by hash.
pub(super) struct Ghost {
    places: Box<[u32]>,
    mask: usize,
}

/// The fingerprint stored for an empty place; a key whose fingerprint is this takes 1 instead.
const EMPTY: u32 = 0;

impl Ghost {
    /// A ghost with room for about `entries` keys (a power of two at least that large).
    pub(super) fn for_entries(entries: usize) -> Ghost {
        let n = entries.max(16).next_power_of_two();
        Ghost {
            places: vec![EMPTY; n].into_boxed_slice(),
            mask: n - 1,
        }
    }

    fn place(&self, hash: u64) -> (usize, u32) {
        let fingerprint = match (hash >> 32) as u32 {
            EMPTY => 1,
            f => f,
        };
        (hash as usize & self.mask, fingerprint)
    }

    /// Grows to at least `entries` places (forgetting what it held: this happens only while
    /// the cache fills, a few times).
    pub(super) fn fit(&mut self, entries: usize) {
        if entries > self.places.len() {
            *self = Ghost::for_entries(entries);
        }
    }

    /// Remembers a key dropped from the small FIFO.
    pub(super) fn add(&mut self, hash: u64) {
        let (i, f) = self.place(hash);
        self.places[i] = f;
    }

    /// Whether the key was dropped recently; it is forgotten either way.
    pub(super) fn take(&mut self, hash: u64) -> bool {
        let (i, f) = self.place(hash);
        let was = self.places[i] == f;
        if was {
            self.places[i] = EMPTY;
        }
        was
    }

    /// Bytes held, for the overhead test.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.places)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_once_and_forgets_when_overwritten() {
        let mut g = Ghost::for_entries(1000);
        assert_eq!(g.mask, 1023);
        let a = 0xdead_beef_0000_0005u64;
        assert!(!g.take(a));
        g.add(a);
        assert!(g.take(a), "a dropped key comes back");
        assert!(!g.take(a), "and is forgotten once it has");
        // Another key at the same place, with other fingerprint bits, overwrites it.
        let b = 0x1234_5678_0000_0005u64;
        g.add(a);
        g.add(b);
        assert!(!g.take(a));
        assert!(g.take(b));
    }

    #[test]
    fn grows_with_the_entries_to_at_most_twice_as_many_places() {
        let mut g = Ghost::for_entries(16);
        g.fit(16);
        assert_eq!(g.places.len(), 16);
        g.fit(17);
        assert_eq!(g.places.len(), 32);
        g.fit(5000);
        assert_eq!(g.places.len(), 8192);
        g.fit(100);
        assert_eq!(g.places.len(), 8192, "it never shrinks");
    }

    #[test]
    fn a_zero_fingerprint_is_not_the_empty_place() {
        let mut g = Ghost::for_entries(16);
        let zero = 0x0000_0000_0000_0003u64;
        assert!(!g.take(zero), "an empty place must not look like a key");
        g.add(zero);
        assert!(g.take(zero));
    }

    #[test]
    fn keeps_about_as_many_keys_as_it_has_places() {
        // 4096 places; drop 4096 distinct keys, then ask for them: about 1 - 1/e of the places
        // end up holding a key, so well over half of the keys are remembered, and none twice.
        let mut g = Ghost::for_entries(4096);
        let hash = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for i in 0..4096 {
            g.add(hash(i));
        }
        let kept = (0..4096).filter(|&i| g.take(hash(i))).count();
        assert!((2000..=4096).contains(&kept), "{kept} of 4096 kept");
        assert_eq!((0..4096).filter(|&i| g.take(hash(i))).count(), 0);
    }
}
