//! A view's training baseline: per feature, the bin edges its values were cut at and the share
//! of training rows in each bin, from the file `baseline = "..."` names in the `[[view]]`.
//!
//! Drift is measured by binning served values at these same edges, so nothing is re-binned per
//! window and shard tallies merge by addition. The file is read and checked whole at start and
//! on every reload: a baseline that does not fit its view is refused, naming the view, the
//! feature and the problem, rather than scoring drift against the wrong bins. The format is
//! the README's "Watching feature values" section; `python -m featureproxy.baseline` writes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use featureproxy_protocol::Dtype;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::registry::Feature;

/// The one format version this proxy reads.
pub const FORMAT_VERSION: u32 = 1;
/// How far the expected shares may sum from 1 (the helper rounds them to 6 places).
const SUM_TOLERANCE: f64 = 1e-3;

/// One feature's training distribution, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureBaseline {
    /// Bin i is `[edges[i-1], edges[i])`, with open ends: `edges.len() + 1` bins.
    pub edges: Vec<f64>,
    /// The share of training rows in each bin; sums to 1.
    pub expected: Vec<f64>,
    /// The share of training values equal to 0.
    pub zero_share: f64,
    /// The share of training values equal to the feature's default.
    pub default_share: f64,
}

/// A view's baseline, as loaded: where from, which bytes, and the features it covers (by
/// position in the view; features it does not name get statistics but no drift).
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub path: PathBuf,
    /// SHA-256 of the file, hex: says in /stats which baseline is in force.
    pub sha256: String,
    pub features: Vec<Option<FeatureBaseline>>,
}

/// Why a view's baseline cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("view {view:?}: cannot read its baseline {path}: {source}")]
    Read {
        view: String,
        path: String,
        source: std::io::Error,
    },
    #[error("view {view:?}: baseline {path} is not a baseline file: {message}")]
    Format {
        view: String,
        path: String,
        message: String,
    },
    #[error("view {view:?}: baseline {path}, feature {feature:?}: {problem}")]
    Feature {
        view: String,
        path: String,
        feature: String,
        problem: String,
    },
}

#[derive(Deserialize)]
struct RawFile {
    version: u32,
    views: BTreeMap<String, RawView>,
}

#[derive(Deserialize)]
struct RawView {
    schema_id: Option<u32>,
    features: BTreeMap<String, RawFeature>,
}

#[derive(Deserialize)]
struct RawFeature {
    dtype: String,
    edges: Vec<f64>,
    expected: Vec<f64>,
    zero_share: f64,
    default_share: f64,
}

/// Where a view's baseline file is: relative paths are taken from the config file's folder.
pub fn resolve(config_origin: &str, file: &str) -> PathBuf {
    let file = Path::new(file);
    match Path::new(config_origin).parent() {
        Some(dir) if file.is_relative() => dir.join(file),
        _ => file.to_path_buf(),
    }
}

/// Reads and checks the baseline at `path` for the view `view` of these features and schema id.
pub fn load(
    view: &str,
    path: &Path,
    features: &[Feature],
    schema_id: u32,
) -> Result<Baseline, BaselineError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| BaselineError::Read {
        view: view.to_string(),
        path: shown.clone(),
        source,
    })?;
    let format = |message: String| BaselineError::Format {
        view: view.to_string(),
        path: shown.clone(),
        message,
    };
    let raw: RawFile = serde_json::from_slice(&bytes).map_err(|e| format(e.to_string()))?;
    if raw.version != FORMAT_VERSION {
        return Err(format(format!(
            "version {} (this proxy reads version {FORMAT_VERSION})",
            raw.version
        )));
    }
    let Some(mut raw_view) = raw.views.into_iter().find(|(n, _)| n == view).map(|v| v.1) else {
        return Err(format(format!("it has no entry for view {view:?}")));
    };
    if let Some(id) = raw_view.schema_id {
        if id != schema_id {
            return Err(format(format!(
                "made for schema_id {id}, but the view's is {schema_id} (its version, features or defaults changed): make the baseline again"
            )));
        }
    }
    let mut out = Vec::with_capacity(features.len());
    for f in features {
        let Some(rf) = raw_view.features.remove(&f.name) else {
            out.push(None);
            continue;
        };
        let checked = check_feature(f, rf).map_err(|problem| BaselineError::Feature {
            view: view.to_string(),
            path: shown.clone(),
            feature: f.name.clone(),
            problem,
        })?;
        out.push(Some(checked));
    }
    if let Some(unknown) = raw_view.features.keys().next() {
        return Err(BaselineError::Feature {
            view: view.to_string(),
            path: shown,
            feature: unknown.clone(),
            problem: "the view has no such feature".into(),
        });
    }
    Ok(Baseline {
        path: path.to_path_buf(),
        sha256: hex(&Sha256::digest(&bytes)),
        features: out,
    })
}

fn check_feature(f: &Feature, raw: RawFeature) -> Result<FeatureBaseline, String> {
    if Dtype::from_name(&raw.dtype) != Some(f.dtype) {
        return Err(format!(
            "dtype {:?}, but the view declares {}",
            raw.dtype, f.dtype
        ));
    }
    if raw.edges.iter().any(|e| !e.is_finite()) {
        return Err("an edge is not a finite number".into());
    }
    if raw.edges.windows(2).any(|w| w[0] >= w[1]) {
        return Err("edges must increase strictly".into());
    }
    if raw.expected.len() != raw.edges.len() + 1 {
        return Err(format!(
            "{} edges make {} bins, but expected has {} shares",
            raw.edges.len(),
            raw.edges.len() + 1,
            raw.expected.len()
        ));
    }
    let share = |s: f64| s.is_finite() && (0.0..=1.0).contains(&s);
    if !raw.expected.iter().all(|&s| share(s)) {
        return Err("an expected share is not between 0 and 1".into());
    }
    let sum: f64 = raw.expected.iter().sum();
    if (sum - 1.0).abs() > SUM_TOLERANCE {
        return Err(format!("expected shares sum to {sum}, not 1"));
    }
    if !share(raw.zero_share) || !share(raw.default_share) {
        return Err("zero_share and default_share must be between 0 and 1".into());
    }
    Ok(FeatureBaseline {
        edges: raw.edges,
        expected: raw.expected,
        zero_share: raw.zero_share,
        default_share: raw.default_share,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features() -> Vec<Feature> {
        vec![
            Feature {
                name: "a".into(),
                dtype: Dtype::F32,
                default: [0; 8],
            },
            Feature {
                name: "n".into(),
                dtype: Dtype::I64,
                default: [0; 8],
            },
        ]
    }

    const GOOD: &str = r#"{"version": 1, "views": {"v": {"features": {
        "a": {"dtype": "f32", "edges": [-1.0, 0.0, 1.0], "expected": [0.2, 0.3, 0.3, 0.2],
              "zero_share": 0.0, "default_share": 0.0, "mean": 0.0}}}}}"#;

    fn load_text(text: &str) -> Result<Baseline, BaselineError> {
        let dir = std::env::temp_dir().join(format!("fp-baseline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:x}.json", Sha256::digest(text.as_bytes())[0]));
        std::fs::write(&path, text).unwrap();
        load("v", &path, &features(), 7)
    }

    #[test]
    fn loads_and_leaves_unnamed_features_without_bins() {
        let b = load_text(GOOD).unwrap();
        assert_eq!(b.features[0].as_ref().unwrap().edges, [-1.0, 0.0, 1.0]);
        assert!(b.features[1].is_none());
        assert_eq!(b.sha256.len(), 64);
    }

    #[test]
    fn names_view_feature_and_problem() {
        let cases = [
            (
                GOOD.replace("\"a\":", "\"zz\":"),
                "feature \"zz\": the view has no such feature",
            ),
            (
                GOOD.replace("[0.2, 0.3, 0.3, 0.2]", "[0.5, 0.5]"),
                "feature \"a\": 3 edges make 4 bins, but expected has 2",
            ),
            (
                GOOD.replace("[-1.0, 0.0, 1.0]", "[1.0, 0.0, 2.0]"),
                "feature \"a\": edges must increase strictly",
            ),
            (
                GOOD.replace("0.2, 0.3, 0.3, 0.2", "0.2, 0.3, 0.3, 0.3"),
                "feature \"a\": expected shares sum to",
            ),
            (
                GOOD.replace("\"f32\"", "\"i64\""),
                "feature \"a\": dtype \"i64\", but the view declares f32",
            ),
            (
                GOOD.replace("\"views\"", "\"viewz\""),
                "is not a baseline file",
            ),
            (GOOD.replace("{\"v\"", "{\"w\""), "no entry for view \"v\""),
            (
                GOOD.replace("{\"features\"", "{\"schema_id\": 8, \"features\""),
                "schema_id 8",
            ),
            ("{not json".to_string(), "is not a baseline file"),
        ];
        for (text, want) in cases {
            let e = load_text(&text).unwrap_err().to_string();
            assert!(e.starts_with("view \"v\": baseline "), "{e}");
            assert!(e.contains(want), "{want:?} not in {e}");
        }
    }
}
