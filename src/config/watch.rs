//! How a view's served values are watched: what a stored NaN or infinity becomes, how often a
//! served row is sampled, and the bins each feature's sampled values are counted in (the
//! baseline's edges where it has them, else [`GENERIC_EDGES`], good for quantiles only).
//!
//! Built once per registry load, shared read-only by every shard: the reading stage asks it
//! which features to check and how to read a value out of a packed row.

use std::ops::Range;
use std::sync::{Arc, LazyLock};

use featureproxy_protocol::Dtype;
use serde::Deserialize;

use super::baseline::{Baseline, FeatureBaseline};
use super::registry::Feature;

/// What a NaN or infinity read from the store is served as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonFinite {
    /// As is, FRESH or STALE: for models that read NaN as missing (tree ensembles).
    Serve,
    /// INVALID with the view's defaults, as a Feast row with a null field already is: a NaN
    /// poisons a linear or neural model's score in silence, and FRESH promises a usable value.
    #[default]
    Invalid,
}

/// The default share of served rows sampled: 1%, ~0.2-0.5% of a batch-100 entity's CPU.
pub const DEFAULT_SAMPLE_RATE: f64 = 0.01;

/// One feature as watched.
#[derive(Debug, Clone)]
pub struct WatchedFeature {
    /// Where its bytes start in the packed row.
    pub offset: usize,
    pub dtype: Dtype,
    /// Its default as a number (bool as 0/1), compared as f64 so -0.0 matches 0.0.
    pub default: f64,
    pub non_finite: NonFinite,
    /// The bins sampled values are counted in: `edges.len() + 1` of them.
    pub edges: Arc<[f64]>,
    /// Its baseline, when the view's baseline names it: drift is scored against it.
    pub baseline: Option<FeatureBaseline>,
}

impl WatchedFeature {
    /// The feature's value in a packed row, as f64.
    #[inline]
    pub fn value(&self, row: &[u8]) -> f64 {
        let b = &row[self.offset..self.offset + self.dtype.width()];
        match self.dtype {
            Dtype::F32 => f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64,
            Dtype::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")),
            Dtype::I32 => i32::from_le_bytes(b.try_into().expect("4 bytes")) as f64,
            Dtype::I64 => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64,
            Dtype::Bool => b[0] as f64,
        }
    }

    /// Whether the dtype can hold a NaN or an infinity.
    pub fn can_be_non_finite(&self) -> bool {
        matches!(self.dtype, Dtype::F32 | Dtype::F64)
    }
}

/// A view's watch: its features as watched, its sampling rate and its baseline.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Share of served entity occurrences sampled, 0 (off) to 1.
    pub sample_rate: f64,
    pub features: Vec<WatchedFeature>,
    /// Indexes in `features` of the float features, checked for NaN/inf on every row read from
    /// the store (rows of views without float features are never scanned).
    pub floats: Vec<usize>,
    /// Byte ranges of a packed row holding runs of adjacent f32 (and f64) features: the first
    /// pass of that check (in the reading stage's `finite`) tests their bits alone, a run at a time.
    pub f32_runs: Box<[Range<usize>]>,
    pub f64_runs: Box<[Range<usize>]>,
    pub baseline: Option<Arc<Baseline>>,
    /// Changes when the bins or what they are scored against change: the stats thread keeps a
    /// view's window across reloads only while this stays.
    pub fingerprint: u64,
}

impl Watch {
    pub fn new(
        features: &[Feature],
        non_finite: &[NonFinite],
        sample_rate: f64,
        baseline: Option<Baseline>,
        schema_id: u32,
    ) -> Watch {
        let mut offset = 0;
        let mut watched = Vec::with_capacity(features.len());
        for (i, f) in features.iter().enumerate() {
            let fb = baseline
                .as_ref()
                .and_then(|b| b.features.get(i).cloned().flatten());
            let edges = match &fb {
                Some(fb) => Arc::from(fb.edges.as_slice()),
                None => GENERIC_EDGES.clone(),
            };
            let mut w = WatchedFeature {
                offset,
                dtype: f.dtype,
                default: 0.0,
                non_finite: non_finite[i],
                edges,
                baseline: fb,
            };
            // The default is the row's bytes of this feature alone, so read it at offset 0.
            w.offset = 0;
            w.default = w.value(&f.default);
            w.offset = offset;
            offset += f.dtype.width();
            watched.push(w);
        }
        let floats: Vec<usize> = (0..watched.len())
            .filter(|&i| watched[i].can_be_non_finite())
            .collect();
        let runs = |dtype: Dtype| {
            let mut runs: Vec<Range<usize>> = Vec::new();
            for w in watched.iter().filter(|w| w.dtype == dtype) {
                let end = w.offset + dtype.width();
                match runs.last_mut() {
                    Some(run) if run.end == w.offset => run.end = end,
                    _ => runs.push(w.offset..end),
                }
            }
            runs.into_boxed_slice()
        };
        let (f32_runs, f64_runs) = (runs(Dtype::F32), runs(Dtype::F64));
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ schema_id as u64;
        for b in baseline.iter().flat_map(|b| b.sha256.bytes()) {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        Watch {
            sample_rate,
            features: watched,
            floats,
            f32_runs,
            f64_runs,
            baseline: baseline.map(Arc::new),
            fingerprint: h,
        }
    }
}

/// Bins for features without a baseline: 0 on its own, then 1-2-5 steps per decade from 1e-3
/// to 1e9 on both sides. Quantiles read from them are within a step (a factor of 2-2.5).
pub static GENERIC_EDGES: LazyLock<Arc<[f64]>> = LazyLock::new(|| {
    let mut pos = Vec::new();
    for exp in -3..=9 {
        for m in [1.0, 2.0, 5.0] {
            pos.push(m * 10f64.powi(exp));
        }
    }
    let mut edges: Vec<f64> = pos.iter().rev().map(|x| -x).collect();
    edges.push(0.0);
    edges.push(f64::from_bits(1)); // the smallest positive f64: 0 has a bin of its own
    edges.extend(pos);
    Arc::from(edges)
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_dtype_at_its_offset_and_the_default_as_a_number() {
        let features = vec![
            Feature {
                name: "x".into(),
                dtype: Dtype::F32,
                default: {
                    let mut d = [0; 8];
                    d[..4].copy_from_slice(&1.5f32.to_le_bytes());
                    d
                },
            },
            Feature {
                name: "n".into(),
                dtype: Dtype::I64,
                default: (-3i64).to_le_bytes(),
            },
            Feature {
                name: "b".into(),
                dtype: Dtype::Bool,
                default: [1, 0, 0, 0, 0, 0, 0, 0],
            },
        ];
        let w = Watch::new(&features, &[NonFinite::Serve; 3], 0.5, None, 1);
        assert_eq!(
            w.features.iter().map(|f| f.default).collect::<Vec<_>>(),
            [1.5, -3.0, 1.0]
        );
        let mut row = 2.5f32.to_le_bytes().to_vec();
        row.extend_from_slice(&7i64.to_le_bytes());
        row.push(0);
        assert_eq!(w.features[1].value(&row), 7.0);
        assert_eq!(w.features[2].value(&row), 0.0);
        assert_eq!(w.floats, [0]);
        assert!(GENERIC_EDGES.windows(2).all(|p| p[0] < p[1]));
    }
}
