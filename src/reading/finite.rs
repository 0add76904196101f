//! NaN and infinities in rows read from the store: counted per feature on every row read (not a
//! sample: one is enough to page), and, for features whose view says `non_finite = "invalid"`,
//! turned into INVALID with the defaults. Rows of views without float features are never
//! scanned; cached rows were checked when they were read.

use crate::config::watch::{NonFinite, Watch};

/// An f32 or f64 is NaN or infinite exactly when all its exponent bits are set.
const F32_EXPONENT: u32 = 0x7f80_0000;
const F64_EXPONENT: u64 = 0x7ff0_0000_0000_0000;

/// Counts `row`'s non-finite values into `counts` (by feature); true when one of them must be
/// answered INVALID.
#[inline]
pub fn check(watch: &Watch, row: &[u8], counts: &mut [u64]) -> bool {
    if !any_non_finite(watch, row) {
        return false;
    }
    count(watch, row, counts)
}

/// Whether a float of `row` is NaN or infinite. Every row read from the store pays for this, so
/// it tests bits over runs of adjacent floats and nothing else (the compiler vectorizes a run;
/// going through each feature's description cost about 4 ns per feature); the rare row it flags
/// is then counted feature by feature.
#[inline]
fn any_non_finite(watch: &Watch, row: &[u8]) -> bool {
    let mut found = 0u32;
    for run in watch.f32_runs.iter() {
        // A row shorter than the view's is left to the layout; its floats that fit are checked.
        let bytes = &row[run.start.min(row.len())..run.end.min(row.len())];
        // Branch-free over whole words, so that the compiler vectorizes the run.
        for w in bytes.chunks_exact(4) {
            let bits = u32::from_le_bytes(w.try_into().unwrap_or_default());
            found |= u32::from(bits & F32_EXPONENT == F32_EXPONENT);
        }
    }
    for run in watch.f64_runs.iter() {
        let bytes = &row[run.start.min(row.len())..run.end.min(row.len())];
        for w in bytes.chunks_exact(8) {
            let bits = u64::from_le_bytes(w.try_into().unwrap_or_default());
            found |= u32::from(bits & F64_EXPONENT == F64_EXPONENT);
        }
    }
    found != 0
}

/// The slow pass over a row [`any_non_finite`] flagged: counts each non-finite feature.
#[cold]
fn count(watch: &Watch, row: &[u8], counts: &mut [u64]) -> bool {
    let mut invalid = false;
    for &i in &watch.floats {
        let f = &watch.features[i];
        if f.offset + f.dtype.width() > row.len() {
            continue; // not a row of this view's width: the layout answers it INVALID anyway
        }
        if !f.value(row).is_finite() {
            counts[i] += 1;
            invalid |= f.non_finite == NonFinite::Invalid;
        }
    }
    invalid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::registry::Feature;
    use featureproxy_protocol::Dtype;

    fn feature(name: &str, dtype: Dtype) -> Feature {
        Feature {
            name: name.into(),
            dtype,
            default: [0; 8],
        }
    }

    #[test]
    fn counts_each_non_finite_float_and_answers_invalid_as_the_feature_says() {
        // a: f32 (invalid), n: i64 (never scanned), b: f64 (serve), c: f32 (invalid).
        let features = [
            feature("a", Dtype::F32),
            feature("n", Dtype::I64),
            feature("b", Dtype::F64),
            feature("c", Dtype::F32),
        ];
        let policy = [
            NonFinite::Invalid,
            NonFinite::Invalid,
            NonFinite::Serve,
            NonFinite::Invalid,
        ];
        let watch = Watch::new(&features, &policy, 0.0, None, 1);
        let row = |a: f32, n: i64, b: f64, c: f32| {
            let mut r = Vec::new();
            r.extend_from_slice(&a.to_le_bytes());
            r.extend_from_slice(&n.to_le_bytes());
            r.extend_from_slice(&b.to_le_bytes());
            r.extend_from_slice(&c.to_le_bytes());
            r
        };
        let mut counts = vec![0u64; 4];
        // Finite extremes, subnormals and an i64 whose bits look like a NaN pass.
        for r in [
            row(0.0, -1, -0.0, 1.0),
            row(f32::MAX, i64::MAX, f64::MIN, f32::MIN_POSITIVE / 2.0),
            row(
                -f32::MAX,
                0x7ff8_0000_0000_0000,
                f64::MAX,
                5e-324_f64 as f32,
            ),
        ] {
            assert!(!check(&watch, &r, &mut counts));
        }
        assert_eq!(counts, [0, 0, 0, 0]);
        // b served as stored: counted, not INVALID; a and c answer INVALID.
        assert!(!check(&watch, &row(1.0, 0, f64::NAN, 2.0), &mut counts));
        assert!(!check(
            &watch,
            &row(1.0, 0, f64::NEG_INFINITY, 2.0),
            &mut counts
        ));
        assert!(check(&watch, &row(f32::NAN, 0, 0.0, 2.0), &mut counts));
        assert!(check(&watch, &row(1.0, 0, 0.0, f32::INFINITY), &mut counts));
        assert!(check(
            &watch,
            &row(-f32::INFINITY, 0, f64::NAN, f32::NAN),
            &mut counts
        ));
        assert_eq!(counts, [2, 0, 3, 2]);
        // A row too short for any feature is left to the layout (which answers it INVALID).
        assert!(!check(&watch, &[0xff; 3], &mut counts));
        assert_eq!(counts, [2, 0, 3, 2]);
    }
}
