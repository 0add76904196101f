//! A seeded bijection on `[0, n)`, so that popularity rank `r` maps to entity id `perm(r)` and hot
//! keys are scattered over the key space instead of being neighbours.
//!
//! A balanced 4-round Feistel network permutes `[0, 2^2h)` for the smallest `2h` bits that hold
//! `n - 1`; values that land at or above `n` are sent through again ("cycle walking"), which keeps
//! a bijection on `[0, n)`. Since `2^2h < 4n`, that takes fewer than 4 rounds of the network on
//! average.

use crate::rng::mix64;

#[derive(Debug, Clone)]
pub struct Scrambler {
    n: u64,
    half_bits: u32,
    mask: u64,
    keys: [u64; 4],
}

impl Scrambler {
    pub fn new(n: u64, seed: u64) -> Scrambler {
        let bits = (64 - n.saturating_sub(1).leading_zeros()).max(2);
        let half_bits = bits.div_ceil(2);
        let mut keys = [0u64; 4];
        for (i, k) in keys.iter_mut().enumerate() {
            *k = mix64(seed ^ mix64(0x5eed_0000 + i as u64));
        }
        Scrambler {
            n,
            half_bits,
            mask: (1u64 << half_bits) - 1,
            keys,
        }
    }

    /// The entity id of popularity rank `r` (`r < n`).
    #[inline]
    pub fn permute(&self, r: u64) -> u64 {
        debug_assert!(r < self.n);
        let mut x = r;
        loop {
            x = self.feistel(x);
            if x < self.n {
                return x;
            }
        }
    }

    #[inline]
    fn feistel(&self, x: u64) -> u64 {
        let mut l = x >> self.half_bits;
        let mut r = x & self.mask;
        for k in self.keys {
            let f = mix64(r ^ k) & self.mask;
            (l, r) = (r, l ^ f);
        }
        (l << self.half_bits) | r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bijection_on_small_domains() {
        for n in (1..=300).chain([1000, 1023, 1024, 1025, 4097]) {
            for seed in [0, 1, 99] {
                let s = Scrambler::new(n, seed);
                let mut seen = vec![false; n as usize];
                for r in 0..n {
                    let id = s.permute(r);
                    assert!(id < n, "n={n}: {r} -> {id}");
                    assert!(!seen[id as usize], "n={n} seed={seed}: {id} hit twice");
                    seen[id as usize] = true;
                }
            }
        }
    }

    #[test]
    fn hot_ranks_are_not_neighbours() {
        let s = Scrambler::new(1_000_000, 1);
        let ids: Vec<u64> = (0..10).map(|r| s.permute(r)).collect();
        let adjacent = ids.windows(2).filter(|w| w[0].abs_diff(w[1]) < 100).count();
        assert!(adjacent <= 1, "{ids:?}");
        assert_ne!(
            Scrambler::new(1000, 1).permute(0),
            Scrambler::new(1000, 2).permute(0)
        );
    }
}
