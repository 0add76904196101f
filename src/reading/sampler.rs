//! Which served entities are sampled for value statistics: random occurrences at each view's
//! rate, by a geometric skip (one random draw and one logarithm per sample, one comparison per
//! entity).
//!
//! Never entities by hash: under skewed traffic a fixed subset of entities is not the
//! distribution the models see (1% by hash under Zipf 0.99 gave PSI 0.49 with no drift at
//! all, random 1% gave 0.0004). Nor a fixed 1-in-N: with batches of N it picks the same
//! position of every batch.

use crate::store::ViewId;

/// One shard's sampler: a countdown per view and a xorshift generator.
pub struct Sampler {
    state: u64,
    /// Entities of each view (index = id - 1) to pass over before the next sample.
    left: Vec<u64>,
}

impl Sampler {
    /// A sampler whose draws follow from `seed` (tests and benchmarks repeat them).
    pub fn new(seed: u64) -> Sampler {
        Sampler {
            state: seed | 1,
            left: Vec::new(),
        }
    }

    /// A sampler seeded from the operating system, so shards do not sample in lockstep.
    pub fn seeded() -> Sampler {
        let mut b = [0u8; 8];
        let _ = getrandom::getrandom(&mut b);
        Sampler::new(u64::from_le_bytes(b))
    }

    /// The position of the next sampled entity of `view` at `rate` (0 to 1) among positions
    /// `from..n` of a batch, passing over the ones before it; `None` (and all of them passed
    /// over) when it falls beyond the batch. A batch thus costs one comparison per entity and
    /// one call per sample, not a countdown per entity: every served entity pays for this.
    #[inline]
    pub fn next_in(&mut self, view: ViewId, rate: f64, from: usize, n: usize) -> Option<usize> {
        if rate <= 0.0 || from >= n {
            return None;
        }
        let i = (view as usize).saturating_sub(1);
        if self.left.len() <= i {
            self.left.resize(i + 1, 0);
        }
        let ahead = (n - from) as u64;
        if self.left[i] >= ahead {
            self.left[i] -= ahead;
            return None;
        }
        let at = from + self.left[i] as usize;
        self.left[i] = self.gap(rate);
        Some(at)
    }

    /// Entities to skip before the next sample: Geometric(rate), floor(ln U / ln(1 - rate)).
    fn gap(&mut self, rate: f64) -> u64 {
        if rate >= 1.0 {
            return 0;
        }
        // xorshift64*, then 53 bits into (0, 1].
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let r = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let u = ((r >> 11) + 1) as f64 / (1u64 << 53) as f64;
        (u.ln() / (1.0 - rate).ln()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_at_the_rate_and_every_position_of_a_batch() {
        // Batches of 100, as a GET of 100 entities; the samples of each batch, position by
        // position, as the reader asks for them.
        let mut s = Sampler::new(42);
        let mut hits = 0;
        let mut by_position = [0u32; 100];
        for _ in 0..10_000 {
            let mut next = s.next_in(1, 0.01, 0, 100);
            while let Some(i) = next {
                hits += 1;
                by_position[i] += 1;
                next = s.next_in(1, 0.01, i + 1, 100);
            }
        }
        assert!((9_500..10_500).contains(&hits), "{hits}");
        assert!(by_position.iter().all(|&c| c > 50), "{by_position:?}");
        // The countdown carries across batches of any size, 1 included.
        let mut ones = 0;
        for _ in 0..100_000 {
            ones += s.next_in(1, 0.01, 0, 1).is_some() as u32;
        }
        assert!((900..1_100).contains(&ones), "{ones}");
        // Every entity at rate 1, none at 0; views keep countdowns of their own.
        let all: Vec<usize> =
            std::iter::successors(s.next_in(2, 1.0, 0, 5), |&i| s.next_in(2, 1.0, i + 1, 5))
                .collect();
        assert_eq!(all, [0, 1, 2, 3, 4]);
        assert_eq!(s.next_in(3, 0.0, 0, 1000), None);
        assert_eq!(s.next_in(1, 0.5, 7, 7), None);
    }
}
