//! A small, fast, seedable generator (SplitMix64) and the 64-bit mixer it is built on.
//!
//! Load generation needs speed and reproducibility, not cryptographic quality: SplitMix64 passes
//! BigCrush, costs a few nanoseconds, and a generator can be derived from any `(seed, index)` pair,
//! which lets the receiver recompute the entities of request `k` without storing them.

/// The SplitMix64 finaliser: a bijective 64-bit mixer.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix64(seed ^ 0x6a09_e667_f3bc_c908))
    }

    /// A generator for stream `index` of `seed`: independent-looking streams for each connection
    /// or request.
    pub fn derive(seed: u64, index: u64) -> Rng {
        Rng(mix64(seed.wrapping_add(mix64(
            index.wrapping_add(0x9e37_79b9_7f4a_7c15),
        ))))
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi] (inclusive).
    #[inline]
    pub fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo <= hi);
        let span = hi - lo;
        if span == u64::MAX {
            return self.next_u64();
        }
        // Lemire's multiply-shift: bias below 2^-64 * span, irrelevant here.
        lo + ((self.next_u64() as u128 * (span as u128 + 1)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let f = a.next_f64();
            b.next_f64();
            assert!((0.0..1.0).contains(&f));
            let r = a.range_inclusive(3, 9);
            b.range_inclusive(3, 9);
            assert!((3..=9).contains(&r));
        }
        assert_ne!(Rng::derive(1, 0).next_u64(), Rng::derive(1, 1).next_u64());
    }
}
