//! The feature registry: which views exist, their features, defaults, freshness rules and
//! layout in the store.
//!
//! Read once at start from the config file ([`super::ConfigFile`]), validated as a whole (every
//! problem is reported with its view and field, not just the first), then shared read-only by
//! every shard.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use featureproxy_protocol::{Dtype, FeatureSpec, SchemaReply};
use serde::Deserialize;

use super::baseline;
use super::changes::Changes;
use super::layouts::{self, LayoutName, RawFeast};
use super::parse_duration;
use super::watch::{NonFinite, Watch, DEFAULT_SAMPLE_RATE};
use crate::store::layout::Layout;
use crate::store::ViewId;

/// One feature of a view, in row order.
#[derive(Debug, Clone)]
pub struct Feature {
    pub name: String,
    pub dtype: Dtype,
    /// The value the model was trained with when the feature is absent, little-endian, padded to 8.
    pub default: [u8; 8],
}

/// A feature view: a named set of features served as one packed row per entity.
#[derive(Debug, Clone)]
pub struct View {
    /// What GET and PUT name the view by: its 1-based position in the file at start; a view a
    /// reload adds gets the next id never given (ids stay with their view and are never reused
    /// while the process lives, so cached rows and counters never land on another view).
    pub id: ViewId,
    pub name: String,
    /// Older than this, a value is served as STALE.
    pub stale_after: Duration,
    /// Older than this, the value is withheld and the defaults are served as EXPIRED.
    pub max_staleness: Duration,
    /// How long a row may live in the proxy's hot cache; zero turns caching off for the view.
    pub hot_cache_ttl: Duration,
    pub features: Vec<Feature>,
    /// Bytes in one row: the sum of the features' widths.
    pub row_bytes: usize,
    /// Non-zero fingerprint of version, feature names, dtypes and defaults.
    pub schema_id: u32,
    /// The row of defaults, served whenever a value is not.
    pub default_row: Bytes,
    /// How the view's rows sit in the store.
    pub layout: Layout,
    /// Where in the store its rows live, as far as a reload cares: the packed layout's version,
    /// or the Feast project. Rows cached under one are not rows of another.
    pub store_identity: String,
    /// How its served values are watched: non-finite handling, sampling, baseline.
    pub watch: Arc<Watch>,
}

impl View {
    /// The SCHEMA reply for this view.
    pub fn schema_reply(&self) -> SchemaReply {
        SchemaReply {
            view_id: self.id,
            schema_id: self.schema_id,
            row_bytes: self.row_bytes as u32,
            stale_after_ms: duration_ms_u32(self.stale_after),
            max_staleness_ms: duration_ms_u32(self.max_staleness),
            features: self
                .features
                .iter()
                .map(|f| FeatureSpec {
                    dtype: f.dtype,
                    name: f.name.clone(),
                    default: f.default,
                })
                .collect(),
        }
    }
}

/// All views, in the file's order, found by id and by name.
#[derive(Debug, Clone)]
pub struct Registry {
    views: Vec<View>,
    /// Index in `views` by view id (ids of removed views hold None).
    slots: Vec<Option<usize>>,
    /// The highest id ever given in this process, removed views' included.
    max_id: ViewId,
}

/// The most view ids one process gives: counters are sized for them once, and a removed view's
/// id is never given again. A reload past it is refused (a restart numbers views afresh).
pub const MAX_VIEW_IDS: usize = 1024;

/// Why a registry file could not be used. `Invalid` lists every problem found.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the registry file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the registry file {path} is not valid TOML for a registry: {message}")]
    Parse { path: String, message: String },
    #[error("the registry file {path} has {} problem(s):\n{}", .problems.len(), .problems.join("\n"))]
    Invalid { path: String, problems: Vec<String> },
}

impl Registry {
    /// The views of the config file at `path` (its settings are checked too).
    pub fn load(path: &str) -> Result<Registry, super::ConfigError> {
        Ok(super::ConfigFile::load(path)?.registry)
    }

    /// The views of config TOML; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Registry, super::ConfigError> {
        Ok(super::ConfigFile::from_toml(text, origin)?.registry)
    }

    /// Validates the `[[view]]` tables of a parsed file; `origin` names the file in errors.
    pub(super) fn from_views(raw: Vec<RawView>, origin: &str) -> Result<Registry, RegistryError> {
        let mut problems = Vec::new();
        let mut views = Vec::new();
        let mut names = HashSet::new();
        if raw.is_empty() {
            problems.push("no views: declare at least one [[view]] table".to_string());
        }
        if raw.len() > u16::MAX as usize {
            problems.push(format!("{} views declared; at most 65535", raw.len()));
        }
        for (i, raw) in raw.into_iter().enumerate() {
            if !names.insert(raw.name.clone()) {
                problems.push(format!(
                    "view {:?}: declared twice; view names must be unique",
                    raw.name
                ));
            }
            if let Some(v) = validate_view(i as u16 + 1, raw, origin, &mut problems) {
                views.push(v);
            }
        }
        if !problems.is_empty() {
            return Err(RegistryError::Invalid {
                path: origin.to_string(),
                problems,
            });
        }
        Ok(Registry::with_ids(views))
    }

    /// The registry of `views`, whose ids are set.
    fn with_ids(views: Vec<View>) -> Registry {
        let max_id = views.iter().map(|v| v.id).max().unwrap_or(0);
        let mut slots = vec![None; max_id as usize + 1];
        for (i, v) in views.iter().enumerate() {
            slots[v.id as usize] = Some(i);
        }
        Registry {
            views,
            slots,
            max_id,
        }
    }

    /// This registry as a reload of `older` puts it in force: views that stay keep their ids,
    /// new ones get ids never given before. Refused, with every problem, when a change would
    /// make stored rows read wrong (see [`super::changes`]) or ids run out.
    pub fn renumbered(self, older: &Registry) -> Result<(Registry, Changes), Vec<String>> {
        let changes = Changes::between(older, &self)?;
        let mut next = older.max_id;
        let mut views = self.views;
        for v in &mut views {
            v.id = match older.by_name(&v.name) {
                Some(old) => old.id,
                None => {
                    next += 1;
                    next
                }
            };
        }
        if next as usize >= MAX_VIEW_IDS {
            return Err(vec![format!(
                "this process has given {next} view ids (at most {}; ids of removed views are not reused): restart the proxy to number views afresh",
                MAX_VIEW_IDS - 1
            )]);
        }
        let mut registry = Registry::with_ids(views);
        registry.max_id = next.max(registry.max_id);
        Ok((registry, changes))
    }

    /// The highest view id given so far in this process.
    pub fn max_id(&self) -> ViewId {
        self.max_id
    }

    pub fn by_id(&self, id: ViewId) -> Option<&View> {
        let i = (*self.slots.get(id as usize)?)?;
        self.views.get(i)
    }

    pub fn by_name(&self, name: &str) -> Option<&View> {
        self.views.iter().find(|v| v.name == name)
    }

    pub fn views(&self) -> &[View] {
        &self.views
    }

    /// Which views' rows the store key `key` holds, and for which entity: how a notice of a
    /// write made behind the proxy's back finds what it changed.
    pub fn locate<'a>(
        &'a self,
        key: &'a [u8],
    ) -> impl Iterator<Item = (ViewId, Cow<'a, [u8]>)> + 'a {
        self.views
            .iter()
            .filter_map(move |v| Some((v.id, v.layout.entity_of(key)?)))
    }

    /// "user_features, fraud_features": for error messages that tell the caller what exists.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.views.iter().map(|v| v.name.as_str()).collect();
        names.join(", ")
    }
}

/// A `[[view]]` table as written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawView {
    name: String,
    /// How the rows sit in the store; the layout's own keys are checked in [`super::layouts`].
    #[serde(default)]
    layout: LayoutName,
    version: Option<u32>,
    ttl: Option<String>,
    feast: Option<RawFeast>,
    stale_after: String,
    max_staleness: String,
    #[serde(default = "default_hot_cache_ttl")]
    hot_cache_ttl: String,
    #[serde(default)]
    features: Vec<RawFeature>,
    /// The view's training baseline (JSON), relative to the config file's folder.
    baseline: Option<String>,
    /// Share of served rows sampled for value statistics, 0 to 1.
    sample_rate: Option<f64>,
    /// What a stored NaN or infinity becomes, for features that do not say.
    #[serde(default)]
    non_finite: NonFinite,
}

fn default_hot_cache_ttl() -> String {
    "1s".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeature {
    name: String,
    dtype: String,
    default: toml::Value,
    /// Overrides the view's `non_finite` for this feature.
    non_finite: Option<NonFinite>,
}

fn validate_view(
    id: u16,
    mut raw: RawView,
    origin: &str,
    problems: &mut Vec<String>,
) -> Option<View> {
    let before = problems.len();
    let vname = raw.name.clone();
    let mut bad =
        |field: &str, msg: String| problems.push(format!("view {vname:?}, {field}: {msg}"));
    if raw.name.is_empty()
        || raw.name.len() > 128
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        bad(
            "name",
            "use 1 to 128 of the characters A-Z a-z 0-9 _ - . (it becomes part of Redis keys)"
                .into(),
        );
    }
    let mut dur = |field: &str, text: &str| match parse_duration(text) {
        Ok(d) => Some(d),
        Err(e) => {
            bad(field, e);
            None
        }
    };
    let stale_after = dur("stale_after", &raw.stale_after);
    let max_staleness = dur("max_staleness", &raw.max_staleness);
    let hot_cache_ttl = dur("hot_cache_ttl", &raw.hot_cache_ttl);
    let mut bad =
        |field: &str, msg: String| problems.push(format!("view {vname:?}, {field}: {msg}"));
    if let (Some(s), Some(m)) = (stale_after, max_staleness) {
        if s > m {
            bad(
                "stale_after",
                format!(
                    "{} is longer than max_staleness {}; a value must turn stale before it expires",
                    raw.stale_after, raw.max_staleness
                ),
            );
        }
        if m.as_millis() >= u32::MAX as u128 {
            bad(
                "max_staleness",
                "must be under 49 days (it travels as u32 milliseconds)".into(),
            );
        }
    }
    if raw.features.is_empty() {
        bad("features", "no features declared".into());
    }
    if raw.features.len() > u16::MAX as usize {
        bad(
            "features",
            format!("{} features; at most 65535", raw.features.len()),
        );
    }
    let sample_rate = raw.sample_rate.unwrap_or(DEFAULT_SAMPLE_RATE);
    if !(0.0..=1.0).contains(&sample_rate) {
        bad(
            "sample_rate",
            format!("{sample_rate} is not a share; use 0 (off) to 1 (every row)"),
        );
    }
    let mut features = Vec::with_capacity(raw.features.len());
    let mut non_finite = Vec::with_capacity(raw.features.len());
    let mut seen = HashSet::new();
    for f in std::mem::take(&mut raw.features) {
        let field = format!("feature {:?}", f.name);
        if f.name.is_empty() || f.name.len() > 255 {
            bad(&field, "name must be 1 to 255 bytes".into());
        }
        if !seen.insert(f.name.clone()) {
            bad(&field, "declared twice in this view".into());
        }
        let Some(dtype) = Dtype::from_name(&f.dtype) else {
            bad(&field, layouts::unknown_dtype(&raw.layout, &f.dtype));
            continue;
        };
        match encode_default(dtype, &f.default) {
            Ok(default) => {
                non_finite.push(f.non_finite.unwrap_or(raw.non_finite));
                features.push(Feature {
                    name: f.name,
                    dtype,
                    default,
                })
            }
            Err(msg) => bad(&field, format!("default {}: {msg}", f.default)),
        }
    }
    let keys = layouts::LayoutKeys {
        name: &raw.name,
        layout: raw.layout,
        version: raw.version,
        ttl: raw.ttl.as_deref(),
        feast: raw.feast.as_ref(),
    };
    let dtypes: Vec<(&str, Dtype)> = features
        .iter()
        .map(|f| (f.name.as_str(), f.dtype))
        .collect();
    let layout = layouts::build(&keys, &dtypes, &mut |field, msg| {
        problems.push(format!("view {vname:?}, {field}: {msg}"))
    });
    if problems.len() > before {
        return None;
    }
    let row_bytes: usize = features.iter().map(|f| f.dtype.width()).sum();
    let mut default_row = Vec::with_capacity(row_bytes);
    for f in &features {
        default_row.extend_from_slice(&f.default[..f.dtype.width()]);
    }
    let layout = layout?;
    let schema_id = fingerprint(&layouts::identity(&layout, raw.version), &features);
    let baseline = match &raw.baseline {
        Some(file) => {
            let path = baseline::resolve(origin, file);
            match baseline::load(&raw.name, &path, &features, schema_id) {
                Ok(b) => Some(b),
                Err(e) => {
                    problems.push(e.to_string());
                    return None;
                }
            }
        }
        None => None,
    };
    let watch = Watch::new(&features, &non_finite, sample_rate, baseline, schema_id);
    Some(View {
        id,
        schema_id,
        watch: Arc::new(watch),
        store_identity: layouts::identity(&layout, raw.version),
        layout,
        name: raw.name,
        stale_after: stale_after?,
        max_staleness: max_staleness?,
        hot_cache_ttl: hot_cache_ttl?,
        features,
        row_bytes,
        default_row: Bytes::from(default_row),
    })
}

/// Encodes a TOML default in its dtype, little-endian, zero-padded to 8 bytes.
fn encode_default(dtype: Dtype, v: &toml::Value) -> Result<[u8; 8], String> {
    let mut out = [0u8; 8];
    let float = || match v {
        toml::Value::Float(f) => Ok(*f),
        toml::Value::Integer(i) => Ok(*i as f64),
        _ => Err(format!("must be a number for dtype {dtype}")),
    };
    let int = || match v {
        toml::Value::Integer(i) => Ok(*i),
        _ => Err(format!("must be an integer for dtype {dtype}")),
    };
    match dtype {
        Dtype::F32 => out[..4].copy_from_slice(&(float()? as f32).to_le_bytes()),
        Dtype::F64 => out.copy_from_slice(&float()?.to_le_bytes()),
        Dtype::I32 => {
            let i = i32::try_from(int()?).map_err(|_| "does not fit in an i32".to_string())?;
            out[..4].copy_from_slice(&i.to_le_bytes());
        }
        Dtype::I64 => out.copy_from_slice(&int()?.to_le_bytes()),
        Dtype::Bool => match v {
            toml::Value::Boolean(b) => out[0] = *b as u8,
            _ => return Err("must be true or false for dtype bool".into()),
        },
    }
    Ok(out)
}

/// FNV-1a over the parts of a view a client depends on; never 0, as 0 means "don't check".
fn fingerprint(identity: &str, features: &[Feature]) -> u32 {
    let mut text = identity.to_string();
    for f in features {
        let _ = write!(text, "|{}:{}:{:02x?}", f.name, f.dtype, f.default);
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

/// Milliseconds as the u32 the protocol carries, saturating (validation keeps thresholds below).
pub fn duration_ms_u32(d: Duration) -> u32 {
    d.as_millis().min(u32::MAX as u128) as u32
}

/// examples/features.toml's registry, for tests.
#[cfg(test)]
pub(crate) fn example() -> Registry {
    Registry::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/features.toml"
    ))
    .expect("examples/features.toml loads")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[view]]
name = "a"
version = 2
ttl = "1h"
stale_after = "2m"
max_staleness = "10m"
features = [
  { name = "x", dtype = "f32", default = 1.5 },
  { name = "n", dtype = "i64", default = -3 },
  { name = "b", dtype = "bool", default = true },
]
"#;

    #[test]
    fn loads_a_valid_view() {
        let r = Registry::from_toml(GOOD, "t.toml").unwrap();
        let v = r.by_name("a").unwrap();
        assert_eq!(v.id, 1);
        assert_eq!(r.by_id(1).unwrap().name, "a");
        assert!(r.by_id(0).is_none() && r.by_id(2).is_none());
        assert_eq!(v.row_bytes, 13);
        let Layout::Packed(packed) = &v.layout else {
            panic!("a view without a layout key is packed");
        };
        assert_eq!(packed.key_prefix(), b"fp:a:v2:");
        assert_eq!(v.hot_cache_ttl, Duration::from_secs(1));
        let mut want = 1.5f32.to_le_bytes().to_vec();
        want.extend_from_slice(&(-3i64).to_le_bytes());
        want.push(1);
        assert_eq!(&v.default_row[..], &want[..]);
        assert_ne!(v.schema_id, 0);
    }

    #[test]
    fn schema_id_changes_with_version_and_defaults() {
        let a = Registry::from_toml(GOOD, "t").unwrap().views()[0].schema_id;
        let b = Registry::from_toml(&GOOD.replace("version = 2", "version = 3"), "t")
            .unwrap()
            .views()[0]
            .schema_id;
        let c = Registry::from_toml(&GOOD.replace("1.5", "2.5"), "t")
            .unwrap()
            .views()[0]
            .schema_id;
        assert!(a != b && a != c && b != c);
    }

    #[test]
    fn reports_every_problem_with_view_and_field() {
        let bad = GOOD
            .replace("version = 2", "version = 0")
            .replace("\"2m\"", "\"soon\"")
            .replace(
                "dtype = \"i64\", default = -3",
                "dtype = \"int\", default = -3",
            )
            .replace(
                "dtype = \"bool\", default = true",
                "dtype = \"bool\", default = 1",
            );
        let err = Registry::from_toml(&bad, "t.toml").unwrap_err().to_string();
        assert!(err.contains("4 problem(s)"), "{err}");
        assert!(err.contains(r#"view "a", version"#), "{err}");
        assert!(err.contains(r#"view "a", stale_after: "soon""#), "{err}");
        assert!(
            err.contains(r#"view "a", feature "n": dtype "int""#),
            "{err}"
        );
        assert!(err.contains(r#"view "a", feature "b": default 1"#), "{err}");
    }

    #[test]
    fn refuses_stale_after_beyond_max_staleness_and_duplicates() {
        let bad = format!("{}\n{}", GOOD.replace("\"10m\"", "\"1m\""), GOOD);
        let err = Registry::from_toml(&bad, "t").unwrap_err().to_string();
        assert!(err.contains("longer than max_staleness"), "{err}");
        assert!(err.contains("declared twice"), "{err}");
    }

    #[test]
    fn i32_default_out_of_range() {
        let bad = GOOD.replace(
            "dtype = \"i64\", default = -3",
            "dtype = \"i32\", default = 4000000000",
        );
        let err = Registry::from_toml(&bad, "t").unwrap_err().to_string();
        assert!(err.contains("does not fit in an i32"), "{err}");
    }

    #[test]
    fn example_registry_is_valid() {
        let r = Registry::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/features.toml"
        ))
        .unwrap();
        let u = r.by_name("user_features").unwrap();
        assert_eq!(u.row_bytes, 64);
        assert_eq!(u.features.len(), 16);
        assert_eq!(u.stale_after, Duration::from_secs(120));
        assert_eq!(u.max_staleness, Duration::from_secs(600));
        assert!(r.views().len() >= 2);
    }
}
