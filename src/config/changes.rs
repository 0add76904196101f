//! What a reload changes in the registry, and whether it may: the rules that keep stored and
//! cached rows meaning what they meant.
//!
//! A packed row is bytes in the order and widths of its view's features, under a key that holds
//! the view's `version`. Changing the features without a new version would make every stored row
//! INVALID (another width) or, worse, misread in silence (the same width: an f32 read as an
//! i32, two features swapped). So that is refused; a migration is a new version (new keys),
//! served beside the old one until the old is removed. Thresholds and defaults apply at once
//! (cached rows are judged when read; defaults are not cached).

use std::collections::HashSet;

use super::registry::{Registry, View};

/// What a reload changes, view by view, and which views' cached rows must go.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// A view that stays, and what of it changed ("stale_after", "defaults", ...).
    pub changed: Vec<(String, Vec<&'static str>)>,
    /// Whether shards must drop their hot caches: a view removed, moved to other keys (a new
    /// version), or given a shorter `hot_cache_ttl` (its cached rows would outlive it).
    pub flush_cache: bool,
}

impl Changes {
    /// The changes from `older` to `newer`, or every reason they may not be made.
    pub fn between(older: &Registry, newer: &Registry) -> Result<Changes, Vec<String>> {
        let mut changes = Changes::default();
        let mut problems = Vec::new();
        let names: HashSet<&str> = newer.views().iter().map(|v| v.name.as_str()).collect();
        for old in older.views() {
            if !names.contains(old.name.as_str()) {
                changes.removed.push(old.name.clone());
                changes.flush_cache = true;
            }
        }
        for new in newer.views() {
            let Some(old) = older.by_name(&new.name) else {
                changes.added.push(new.name.clone());
                continue;
            };
            let what = differences(old, new);
            if what.is_empty() {
                continue;
            }
            let moved = what.contains(&"version") || what.contains(&"layout");
            if what.contains(&"features") && !moved && new.layout.name() == "packed" {
                problems.push(format!(
                    "view {:?}: its features (names, dtypes or order) changed but its version did not, so the rows stored under version {} would be read wrong; bump version (the new rows go under new keys: serve v1 and v2 side by side, then remove v1), or restore the features",
                    new.name, old.store_identity
                ));
            }
            // A row cached while NaN was served must not outlive a switch to INVALID.
            if moved || new.hot_cache_ttl < old.hot_cache_ttl || what.contains(&"non_finite") {
                changes.flush_cache = true;
            }
            changes.changed.push((new.name.clone(), what));
        }
        if problems.is_empty() {
            Ok(changes)
        } else {
            Err(problems)
        }
    }

    /// One line for the log and the reload's answer.
    pub fn summary(&self) -> String {
        let changed: Vec<String> = self
            .changed
            .iter()
            .map(|(v, what)| format!("{v} ({})", what.join(", ")))
            .collect();
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        format!(
            "added: {}; removed: {}; changed: {}",
            list(&self.added),
            list(&self.removed),
            list(&changed)
        )
    }
}

/// What differs between two versions of one view.
fn differences(old: &View, new: &View) -> Vec<&'static str> {
    let mut what = Vec::new();
    if old.layout.name() != new.layout.name() {
        what.push("layout");
    } else if old.store_identity != new.store_identity {
        what.push("version");
    }
    let shape = |v: &View| -> Vec<(String, u8)> {
        v.features
            .iter()
            .map(|f| (f.name.clone(), f.dtype as u8))
            .collect()
    };
    if shape(old) != shape(new) {
        what.push("features");
    }
    if old.default_row != new.default_row {
        what.push("defaults");
    }
    if old.stale_after != new.stale_after {
        what.push("stale_after");
    }
    if old.max_staleness != new.max_staleness {
        what.push("max_staleness");
    }
    if old.hot_cache_ttl != new.hot_cache_ttl {
        what.push("hot_cache_ttl");
    }
    let non_finite =
        |v: &View| -> Vec<_> { v.watch.features.iter().map(|f| f.non_finite).collect() };
    if non_finite(old) != non_finite(new) {
        what.push("non_finite");
    }
    if old.watch.sample_rate != new.watch.sample_rate {
        what.push("sample_rate");
    }
    let baseline = |v: &View| v.watch.baseline.as_ref().map(|b| b.sha256.clone());
    if baseline(old) != baseline(new) {
        what.push("baseline");
    }
    what
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(text: &str) -> Registry {
        Registry::from_toml(text, "test.toml").unwrap()
    }

    const V: &str = "[[view]]\nname = \"a\"\nversion = 1\nttl = \"1d\"\nstale_after = \"1m\"\nmax_staleness = \"5m\"\nfeatures = [{ name = \"x\", dtype = \"f32\", default = 0.0 }]\n";
    const W: &str = "[[view]]\nname = \"b\"\nversion = 1\nttl = \"1d\"\nstale_after = \"1m\"\nmax_staleness = \"5m\"\nfeatures = [{ name = \"y\", dtype = \"i64\", default = 0 }]\n";

    #[test]
    fn views_keep_their_ids_and_new_ones_get_ids_never_given() {
        let start = registry(&format!("{V}{W}"));
        assert_eq!(start.by_name("b").unwrap().id, 2);
        // a removed, c added: b keeps 2, c gets 3 (not 1, a's).
        let c = W.replace("\"b\"", "\"c\"");
        let (next, changes) = registry(&format!("{W}{c}")).renumbered(&start).unwrap();
        assert_eq!(next.by_name("b").unwrap().id, 2);
        assert_eq!(next.by_name("c").unwrap().id, 3);
        assert!(next.by_id(1).is_none());
        assert_eq!(changes.removed, ["a"]);
        assert_eq!(changes.added, ["c"]);
        assert!(changes.flush_cache);
        // a comes back: a new id again.
        let (again, _) = registry(&format!("{V}{W}{c}")).renumbered(&next).unwrap();
        assert_eq!(again.by_name("a").unwrap().id, 4);
        assert_eq!(again.max_id(), 4);
    }

    #[test]
    fn a_feature_change_without_a_version_bump_is_refused_and_with_one_it_flushes() {
        let start = registry(V);
        let retyped = V.replace(
            "dtype = \"f32\", default = 0.0",
            "dtype = \"i32\", default = 0",
        );
        let problems = registry(&retyped).renumbered(&start).unwrap_err();
        assert!(problems[0].contains("bump version"), "{problems:?}");
        let bumped = retyped.replace("version = 1", "version = 2");
        let (_, changes) = registry(&bumped).renumbered(&start).unwrap();
        assert_eq!(
            changes.changed,
            [("a".to_string(), vec!["version", "features"])]
        );
        assert!(changes.flush_cache);
    }

    #[test]
    fn a_switch_to_invalid_nan_flushes_and_sampling_does_not() {
        let start = registry(V);
        let text = V.replace(
            "max_staleness",
            "non_finite = \"serve\"\nsample_rate = 0.5\nmax_staleness",
        );
        let (_, changes) = registry(&text).renumbered(&start).unwrap();
        assert_eq!(
            changes.changed,
            [("a".to_string(), vec!["non_finite", "sample_rate"])]
        );
        assert!(
            changes.flush_cache,
            "no NaN row cached under serve outlives it"
        );
        let rate = V.replace("max_staleness", "sample_rate = 0.5\nmax_staleness");
        let (_, changes) = registry(&rate).renumbered(&start).unwrap();
        assert!(!changes.flush_cache);
    }

    #[test]
    fn thresholds_and_defaults_apply_without_flushing() {
        let start = registry(V);
        let text = V
            .replace("stale_after = \"1m\"", "stale_after = \"30s\"")
            .replace("default = 0.0", "default = 1.5");
        let (_, changes) = registry(&text).renumbered(&start).unwrap();
        assert_eq!(
            changes.changed,
            [("a".to_string(), vec!["defaults", "stale_after"])]
        );
        assert!(!changes.flush_cache);
        assert_eq!(
            changes.summary(),
            "added: none; removed: none; changed: a (defaults, stale_after)"
        );
    }
}
