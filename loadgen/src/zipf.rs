//! Zipf-distributed ranks by rejection-inversion (W. Hörmann and G. Derflinger, "Rejection-inversion
//! to generate variates from monotone discrete distributions", ACM TOMACS 6(3), 1996), the method
//! of Apache Commons' `RejectionInversionZipfSampler`, rand_distr's `Zipf` and memtier.
//!
//! Rank `k` in `1..=n` has probability `k^-s / H(n, s)`, where `H(n, s) = sum_{i=1..n} i^-s` is the
//! generalized harmonic number. Set-up is O(1) and a draw costs a couple of `exp`/`ln` calls with
//! an expected number of iterations just above 1, whatever `n`.

use crate::rng::Rng;

#[derive(Debug, Clone)]
pub struct Zipf {
    n: f64,
    s: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    threshold: f64,
}

impl Zipf {
    /// A sampler over ranks `1..=n` with exponent `s` (`s > 0`; `s` near 1 is fine).
    pub fn new(n: u64, s: f64) -> Result<Zipf, String> {
        if n == 0 {
            return Err("the number of entities must be at least 1".into());
        }
        if !(s.is_finite() && s > 0.0) {
            return Err(format!("the Zipf exponent must be > 0, got {s}"));
        }
        let mut z = Zipf {
            n: n as f64,
            s,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            threshold: 0.0,
        };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(z.n + 0.5);
        z.threshold = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        Ok(z)
    }

    /// A rank in `1..=n`; 1 is the most popular.
    #[inline]
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        loop {
            let u = self.h_integral_n + rng.next_f64() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.threshold || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }

    /// `x^-s`.
    #[inline]
    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    /// An antiderivative of `h`: `(x^(1-s) - 1) / (1 - s)`, computed stably near `s = 1`.
    #[inline]
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.s) * log_x) * log_x
    }

    #[inline]
    fn h_integral_inverse(&self, x: f64) -> f64 {
        let mut t = x * (1.0 - self.s);
        if t < -1.0 {
            // Rounding can push t just below -1; the true value is within [-1, ...).
            t = -1.0;
        }
        (helper1(t) * x).exp()
    }
}

/// `ln(1 + x) / x`, and its limit 1 at 0.
#[inline]
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(exp(x) - 1) / x`, and its limit 1 at 0.
#[inline]
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
    }
}

/// The generalized harmonic number `H(m, s) = sum_{k=1..m} k^-s` (summed smallest term first).
pub fn harmonic(m: u64, s: f64) -> f64 {
    (1..=m).rev().map(|k| (k as f64).powf(-s)).sum()
}

/// The share of draws that land on the `top` most popular of `n` ranks: `H(top, s) / H(n, s)`.
pub fn top_share(top: u64, n: u64, s: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    harmonic(top.min(n), s) / harmonic(n, s)
}

/// How many keys "the top 1%" is for `n` keys (at least one).
pub fn top1_count(n: u64) -> u64 {
    n.div_ceil(100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_one_percent_share_matches_harmonic_numbers() {
        // s = 0.99 over 1M keys: the share the hottest 10,000 keys get, measured on 2M draws,
        // must match H(10^4, s) / H(10^6, s). With 2M draws the standard error of a share near
        // 0.6 is about 0.035 percentage points; allow 0.3.
        let (n, s) = (1_000_000u64, 0.99);
        let z = Zipf::new(n, s).unwrap();
        let top = top1_count(n);
        let expected = top_share(top, n, s);
        assert!(
            (0.55..0.70).contains(&expected),
            "analytic share {expected}"
        );
        let mut rng = Rng::new(42);
        let draws = 2_000_000u64;
        let (mut hits, mut first) = (0u64, 0u64);
        for _ in 0..draws {
            let k = z.sample(&mut rng);
            assert!((1..=n).contains(&k));
            hits += u64::from(k <= top);
            first += u64::from(k == 1);
        }
        let share = hits as f64 / draws as f64;
        assert!(
            (share - expected).abs() < 0.003,
            "top-1% share {share:.4}, analytic {expected:.4}"
        );
        let p1 = 1.0 / harmonic(n, s);
        let got1 = first as f64 / draws as f64;
        assert!((got1 - p1).abs() < 0.002, "rank 1: {got1:.4} vs {p1:.4}");
    }

    #[test]
    fn small_domain_frequencies() {
        // Every rank of a small domain, compared with its exact probability.
        for s in [0.5, 0.99, 1.0, 1.2, 2.0] {
            let n = 20u64;
            let z = Zipf::new(n, s).unwrap();
            let h = harmonic(n, s);
            let mut counts = vec![0u64; n as usize + 1];
            let mut rng = Rng::new(9);
            let draws = 400_000;
            for _ in 0..draws {
                counts[z.sample(&mut rng) as usize] += 1;
            }
            for k in 1..=n {
                let p = (k as f64).powf(-s) / h;
                let got = counts[k as usize] as f64 / draws as f64;
                assert!((got - p).abs() < 0.004, "s={s} k={k}: {got:.4} vs {p:.4}");
            }
        }
    }

    #[test]
    fn degenerate_inputs() {
        assert!(Zipf::new(0, 1.0).is_err());
        assert!(Zipf::new(10, 0.0).is_err());
        assert!(Zipf::new(10, f64::NAN).is_err());
        let z = Zipf::new(1, 0.99).unwrap();
        let mut rng = Rng::new(1);
        assert!((0..100).all(|_| z.sample(&mut rng) == 1));
        assert_eq!(top1_count(1_000_000), 10_000);
        assert_eq!(top1_count(50), 1);
        assert!((top_share(10, 10, 0.99) - 1.0).abs() < 1e-12);
    }
}
