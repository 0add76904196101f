//! What the status page plots, once a second for the last five minutes, so a page opened in the
//! middle of an incident shows the minutes before it at once (`GET /stats/history`).
//!
//! A [`Sample`] is the slice of `/stats` the page turns into points: the time, the cumulative
//! counters it takes rates and shares from, and each view's last one-second interval (GETs, p50,
//! p99, age). `/stats` renders the sample it reads with the same code, so the page reads both the
//! same way. A thread of the endpoint takes one sample a second (it merges the last interval's
//! histograms, as one `/stats` does) and keeps [`SAMPLES`] of them, about 110 bytes per view each.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use featureproxy_protocol::{Op, Status};
use serde_json::{json, Map, Value};

use super::{Endpoint, Sources};
use crate::config::registry::Registry;
use crate::telemetry::histograms::ShardHistograms;

/// Samples kept: five minutes at one a second.
pub const SAMPLES: usize = 300;

/// Wall-clock Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Microseconds (or milliseconds) as milliseconds (or seconds), rounded to what was recorded:
/// dividing an integer prints as the short decimal (0.204), where multiplying by 1e-3 may not
/// (0.20400000000000001).
pub fn thousandths(v: u64) -> f64 {
    v as f64 / 1000.0
}

/// One view's figures in a sample.
#[derive(Debug, Clone, Default)]
pub struct ViewSample {
    pub id: u16,
    /// GETs in the last one-second interval, over all shards: GET/s.
    pub gets_last_s: u64,
    pub get_p50_us: u64,
    pub get_p99_us: u64,
    /// Age of the values served in the last interval: p99 and the oldest.
    pub age_p99_ms: u64,
    pub age_max_ms: u64,
    /// Cumulative, over all shards: entities served by status (index = status byte), from the
    /// hot cache, and hot-cache lookups that hit and missed.
    pub entities: [u64; 6],
    pub cached: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
}

/// The process's figures at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub now_ms: u64,
    /// Cumulative, over all shards: GET requests (answered or refused), all requests answered,
    /// ERROR answers, GETs shed (OVERLOADED).
    pub gets: u64,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub requests_shed: u64,
    pub views: Vec<ViewSample>,
}

impl Sample {
    /// Reads the shards' counters now; `last` is the last interval's histograms merged over
    /// shards.
    pub fn read(src: &Sources, last: &ShardHistograms) -> Sample {
        let sum = |f: &dyn Fn(&crate::telemetry::counters::ShardStats) -> u64| -> u64 {
            src.shards.iter().map(|s| f(s)).sum()
        };
        let registry = src.registry();
        let views = registry
            .views()
            .iter()
            .map(|view| {
                let i = view.id as usize - 1;
                let mut v = ViewSample {
                    id: view.id,
                    ..Default::default()
                };
                if let Some(h) = last.get_us.get(i) {
                    v.gets_last_s = h.len();
                    v.get_p50_us = h.value_at_quantile(0.5);
                    v.get_p99_us = h.value_at_quantile(0.99);
                }
                if let Some(h) = last.age_ms.get(i) {
                    v.age_p99_ms = h.value_at_quantile(0.99);
                    v.age_max_ms = h.max();
                }
                for vs in src.shards.iter().filter_map(|s| s.view(view.id)) {
                    for (total, c) in v.entities.iter_mut().zip(&vs.entities) {
                        *total += c.get();
                    }
                    v.cached += vs.cached.get();
                    v.cache_hits += vs.cache_hits.get();
                    v.cache_misses += vs.cache_misses.get();
                }
                v
            })
            .collect();
        Sample {
            now_ms: now_ms(),
            gets: sum(&|s| s.requests_ok.of(Op::Get).get() + s.requests_failed.of(Op::Get).get()),
            requests_ok: sum(&|s| s.requests_ok.total()),
            requests_failed: sum(&|s| s.requests_failed.total()),
            requests_shed: sum(&|s| s.requests_shed.get()),
            views,
        }
    }

    /// Per view (by name; views the registry no longer has are left out), `extra` adding what
    /// `/stats` carries beside the sample.
    pub fn views_json(
        &self,
        registry: &Registry,
        extra: impl Fn(&mut Map<String, Value>, u16),
    ) -> Value {
        let mut views = Map::new();
        for v in &self.views {
            let Some(view) = registry.by_id(v.id) else {
                continue;
            };
            let mut entities = Map::new();
            for st in Status::ALL {
                entities.insert(st.name().into(), v.entities[st as usize].into());
            }
            let mut m = Map::new();
            m.insert("id".into(), v.id.into());
            extra(&mut m, v.id);
            let figures = json!({
                "gets_last_s": v.gets_last_s,
                "get_p50_ms": thousandths(v.get_p50_us),
                "get_p99_ms": thousandths(v.get_p99_us),
                "age_p99_s": thousandths(v.age_p99_ms),
                "age_max_s": thousandths(v.age_max_ms),
                "entities": entities,
                "cached": v.cached,
                "cache_hits": v.cache_hits,
                "cache_misses": v.cache_misses,
            });
            if let Value::Object(f) = figures {
                m.extend(f);
            }
            views.insert(view.name.clone(), Value::Object(m));
        }
        Value::Object(views)
    }

    /// The process's counters, as `/stats` has them under `merged`.
    pub fn merged_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("gets".into(), self.gets.into());
        m.insert("requests_ok".into(), self.requests_ok.into());
        m.insert("requests_failed".into(), self.requests_failed.into());
        m.insert("requests_shed".into(), self.requests_shed.into());
        m
    }

    /// The sample as one entry of `/stats/history`: the paths of `/stats` it carries.
    pub fn json(&self, registry: &Registry) -> Value {
        json!({
            "now_ms": self.now_ms,
            "merged": self.merged_json(),
            "views": self.views_json(registry, |_, _| {}),
        })
    }
}

/// The last [`SAMPLES`] samples, oldest first.
#[derive(Default)]
pub struct History {
    ring: Mutex<VecDeque<Sample>>,
}

impl History {
    pub fn push(&self, s: Sample) {
        if let Ok(mut ring) = self.ring.lock() {
            if ring.len() == SAMPLES {
                ring.pop_front();
            }
            ring.push_back(s);
        }
    }

    pub fn len(&self) -> usize {
        self.ring.lock().map_or(0, |r| r.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `{"interval_ms": 1000, "samples": [...]}`, oldest first.
    pub fn json(&self, registry: &Registry) -> Value {
        let ring = self.ring.lock().map(|r| r.clone()).unwrap_or_default();
        let samples: Vec<Value> = ring.iter().map(|s| s.json(registry)).collect();
        json!({ "interval_ms": 1000, "samples": samples })
    }
}

/// Takes a sample once a second, on a thread of its own, for as long as the process lives.
pub fn start_sampler(ep: Arc<Endpoint>) {
    let spawned = std::thread::Builder::new()
        .name("stats-history".into())
        .spawn(move || loop {
            let last = ep.src.merged_last();
            ep.history.push(Sample::read(&ep.src, &last));
            std::thread::sleep(Duration::from_secs(1));
        });
    if spawned.is_err() {
        tracing::warn!("could not start the stats history thread; /stats/history stays empty");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let text = include_str!("../../examples/features.toml");
        Registry::from_toml(text, "examples/features.toml").unwrap()
    }

    #[test]
    fn keeps_the_last_five_minutes_oldest_first() {
        let h = History::default();
        for t in 0..(SAMPLES as u64 + 5) {
            h.push(Sample {
                now_ms: t,
                ..Default::default()
            });
        }
        assert_eq!(h.len(), SAMPLES);
        let j = h.json(&registry());
        let samples = j["samples"].as_array().unwrap();
        assert_eq!(samples.len(), SAMPLES);
        assert_eq!(samples[0]["now_ms"], 5);
        assert_eq!(samples[SAMPLES - 1]["now_ms"], SAMPLES as u64 + 4);
    }

    #[test]
    fn a_sample_reads_as_stats_does_with_short_decimals() {
        let mut v = ViewSample {
            id: 2,
            gets_last_s: 7,
            get_p50_us: 204,
            get_p99_us: 1100,
            age_max_ms: 30_500,
            cache_hits: 3,
            ..Default::default()
        };
        v.entities[Status::Degraded as usize] = 4;
        let s = Sample {
            now_ms: 9,
            gets: 11,
            requests_shed: 1,
            views: vec![v],
            ..Default::default()
        };
        let j = s.json(&registry());
        let f = &j["views"]["fraud_features"];
        assert_eq!(f["id"], 2);
        assert_eq!(f["gets_last_s"], 7);
        assert_eq!(f["get_p50_ms"].to_string(), "0.204");
        assert_eq!(f["get_p99_ms"].to_string(), "1.1");
        assert_eq!(f["age_max_s"].to_string(), "30.5");
        assert_eq!(f["entities"]["degraded"], 4);
        assert_eq!(f["cache_hits"], 3);
        assert_eq!(j["merged"]["gets"], 11);
        assert_eq!(j["merged"]["requests_shed"], 1);
        assert!(j["views"].get("user_features").is_none(), "no sample of it");
    }
}
