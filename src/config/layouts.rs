//! The layout keys of a `[[view]]` table (`layout`, `version`, `ttl`, `feast`): which keys each
//! layout takes, checked and turned into the view's [`Layout`].

use std::time::Duration;

use featureproxy_protocol::Dtype;
use serde::Deserialize;

use super::parse_duration;
use crate::store::layout::feast::{JoinKey, JoinKeyType, MAX_JOIN_KEYS};
use crate::store::layout::{Feast, Layout, Packed};

/// The `layout` key of a view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayoutName {
    /// Ours: `fp:{view}:v{version}:{entity}` holding the packed row.
    #[default]
    Packed,
    /// Feast's online store, unchanged.
    Feast,
}

/// A view's `feast` table: where Feast keeps the view's rows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeast {
    /// Feast's project: the suffix of every key.
    project: String,
    /// The entity's join keys, in the order a GET's entity key lists their values.
    join_keys: Vec<RawJoinKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJoinKey {
    name: String,
    dtype: String,
}

/// Feast value types that have no fixed width, so no place in a packed row.
const UNPACKABLE_FEAST_TYPES: [&str; 8] = [
    "string",
    "bytes",
    "unix_timestamp",
    "list",
    "map",
    "json",
    "struct",
    "uuid",
];

/// What to say about a feature dtype that is not one of ours.
pub fn unknown_dtype(layout: &LayoutName, dtype: &str) -> String {
    let lower = dtype.to_ascii_lowercase();
    let feast_type = UNPACKABLE_FEAST_TYPES
        .iter()
        .any(|t| lower == *t || lower.contains("list") || lower.contains("map"));
    if *layout == LayoutName::Feast && feast_type {
        format!(
            "dtype {dtype:?} is a Feast type that cannot be packed into a fixed-width row; leave the feature out of the view (featureproxy serves f32, f64, i32, i64, bool)"
        )
    } else {
        format!("dtype {dtype:?} is not one of f32, f64, i32, i64, bool")
    }
}

/// A view's keys that belong to its layout, as written.
pub struct LayoutKeys<'a> {
    /// The view's name: part of its keys in the store.
    pub name: &'a str,
    pub layout: LayoutName,
    pub version: Option<u32>,
    pub ttl: Option<&'a str>,
    pub feast: Option<&'a RawFeast>,
}

/// The view's layout for its features (name and dtype, in row order), or None after reporting
/// each problem through `bad(field, message)`.
pub fn build(
    raw: &LayoutKeys,
    features: &[(&str, Dtype)],
    bad: &mut dyn FnMut(&str, String),
) -> Option<Layout> {
    match raw.layout {
        LayoutName::Packed => {
            let row_bytes = features.iter().map(|(_, d)| d.width()).sum();
            packed(raw, row_bytes, bad)
        }
        LayoutName::Feast => feast(raw, features, bad),
    }
}

/// What identifies the view's rows beyond its features, for the schema fingerprint.
pub fn identity(layout: &Layout, version: Option<u32>) -> String {
    match layout {
        Layout::Packed(_) => format!("v{}", version.unwrap_or(0)),
        Layout::Feast(f) => format!("feast:{}", String::from_utf8_lossy(f.project())),
    }
}

fn packed(raw: &LayoutKeys, row_bytes: usize, bad: &mut dyn FnMut(&str, String)) -> Option<Layout> {
    if raw.feast.is_some() {
        bad(
            "feast",
            "a feast table is only for layout = \"feast\"; add that, or remove the table".into(),
        );
    }
    let version = match raw.version {
        None => {
            bad(
                "version",
                "missing: a packed view needs version = 1 (or more); it is part of its keys".into(),
            );
            None
        }
        Some(0) => {
            bad("version", "must be 1 or more".into());
            None
        }
        v => v,
    };
    let ttl = match raw.ttl.map(parse_duration) {
        None => {
            bad(
                "ttl",
                "missing: the Redis expiry of rows written by PUT, e.g. ttl = \"7d\"".into(),
            );
            None
        }
        Some(Err(e)) => {
            bad("ttl", e);
            None
        }
        Some(Ok(t)) if t < Duration::from_millis(1) => {
            bad(
                "ttl",
                "must be at least 1ms; rows written with no expiry would never leave Redis".into(),
            );
            None
        }
        Some(Ok(t)) => Some(t),
    };
    Some(Layout::Packed(Packed::new(
        raw.name, version?, row_bytes, ttl?,
    )))
}

fn feast(
    raw: &LayoutKeys,
    features: &[(&str, Dtype)],
    bad: &mut dyn FnMut(&str, String),
) -> Option<Layout> {
    let mut ok = true;
    let mut bad = |field: &str, msg: String| {
        ok = false;
        bad(field, msg)
    };
    if raw.version.is_some() {
        bad(
            "version",
            "a Feast view has no version (Feast's keys carry none): remove it".into(),
        );
    }
    let ttl = match raw.ttl.map(parse_duration) {
        None => None,
        Some(Err(e)) => {
            bad("ttl", e);
            None
        }
        Some(Ok(t)) if t.as_secs() == 0 || t.subsec_nanos() != 0 => {
            bad("ttl", "must be whole seconds, 1s or more: PUT sets it with EXPIRE, as Feast's key_ttl_seconds does; leave ttl out for no expiry".into());
            None
        }
        Some(Ok(t)) => Some(t),
    };
    let Some(f) = raw.feast else {
        bad(
            "feast",
            "missing: layout = \"feast\" needs feast = { project = \"...\", join_keys = [{ name = \"...\", dtype = \"int64\" }] }".into(),
        );
        return None;
    };
    if f.project.is_empty() {
        bad(
            "feast.project",
            "must be Feast's project name (feature_store.yaml's project)".into(),
        );
    }
    if f.join_keys.is_empty() || f.join_keys.len() > MAX_JOIN_KEYS {
        bad(
            "feast.join_keys",
            format!(
                "{} join keys; a view has 1 to {MAX_JOIN_KEYS}",
                f.join_keys.len()
            ),
        );
    }
    let mut join_keys = Vec::with_capacity(f.join_keys.len());
    for jk in &f.join_keys {
        let field = format!("feast.join_keys {:?}", jk.name);
        if jk.name.is_empty() {
            bad(&field, "the join key's name must not be empty".into());
        }
        if join_keys.iter().any(|k: &JoinKey| k.name == jk.name) {
            bad(&field, "declared twice".into());
        }
        match JoinKeyType::from_name(&jk.dtype) {
            Some(dtype) => join_keys.push(JoinKey {
                name: jk.name.clone(),
                dtype,
            }),
            None => bad(
                &field,
                format!(
                    "dtype {:?} is not one of {} (Feast allows no other types in entity keys)",
                    jk.dtype,
                    JoinKeyType::NAMES
                ),
            ),
        }
    }
    if !ok {
        return None;
    }
    Some(Layout::Feast(Feast::new(
        raw.name, &f.project, join_keys, features, ttl,
    )))
}

#[cfg(test)]
mod tests {
    use crate::config::registry::Registry;
    use crate::store::layout::feast::JoinKeyType;
    use crate::store::Layout;

    const FEAST: &str = r#"
[[view]]
name = "driver_hourly_stats"
layout = "feast"
stale_after = "1h"
max_staleness = "1d"
feast = { project = "driver_ranking", join_keys = [{ name = "driver_id", dtype = "int64" }] }
features = [
  { name = "conv_rate", dtype = "f32", default = 0.25 },
  { name = "avg_daily_trips", dtype = "i64", default = 3 },
]
"#;

    #[test]
    fn a_feast_view_loads_with_its_join_keys_and_no_version() {
        let r = Registry::from_toml(FEAST, "t.toml").unwrap();
        let v = r.by_name("driver_hourly_stats").unwrap();
        let Layout::Feast(f) = &v.layout else {
            panic!("layout = \"feast\" gives a Feast layout")
        };
        assert_eq!(f.project(), b"driver_ranking");
        assert_eq!(f.join_keys()[0].dtype, JoinKeyType::Int64);
        assert_eq!(v.row_bytes, 12);
        let with_ttl = FEAST.replace("layout = \"feast\"", "layout = \"feast\"\nttl = \"2d\"");
        assert!(Registry::from_toml(&with_ttl, "t").is_ok());
        let other_project = FEAST.replace("driver_ranking", "other");
        let schema = |t: &str| Registry::from_toml(t, "t").unwrap().views()[0].schema_id;
        assert_ne!(schema(FEAST), schema(&other_project));
    }

    #[test]
    fn each_layout_refuses_the_keys_of_the_other_by_name() {
        let bad = FEAST
            .replace(
                "layout = \"feast\"",
                "layout = \"feast\"\nversion = 1\nttl = \"1500ms\"",
            )
            .replace("dtype = \"int64\" }", "dtype = \"float\" }")
            .replace("dtype = \"i64\"", "dtype = \"string\"");
        let err = Registry::from_toml(&bad, "t.toml").unwrap_err().to_string();
        for want in [
            r#"view "driver_hourly_stats", version: a Feast view has no version"#,
            r#"view "driver_hourly_stats", ttl: must be whole seconds"#,
            r#"view "driver_hourly_stats", feast.join_keys "driver_id": dtype "float" is not one of int64, int32, string, bytes"#,
            r#"view "driver_hourly_stats", feature "avg_daily_trips": dtype "string" is a Feast type that cannot be packed"#,
        ] {
            assert!(err.contains(want), "missing {want:?} in:\n{err}");
        }
        let no_table = FEAST.replace(
            "feast = { project = \"driver_ranking\", join_keys = [{ name = \"driver_id\", dtype = \"int64\" }] }",
            "",
        );
        let err = Registry::from_toml(&no_table, "t").unwrap_err().to_string();
        assert!(
            err.contains("feast: missing: layout = \"feast\" needs feast = {"),
            "{err}"
        );
        let packed_with_feast = FEAST.replace("layout = \"feast\"", "version = 1\nttl = \"1d\"");
        let err = Registry::from_toml(&packed_with_feast, "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a feast table is only for layout = \"feast\""),
            "{err}"
        );
        let unknown = FEAST.replace("layout = \"feast\"", "layout = \"hash\"");
        let err = Registry::from_toml(&unknown, "t").unwrap_err().to_string();
        assert!(
            err.contains("unknown variant `hash`, expected `packed` or `feast`"),
            "{err}"
        );
    }
}
