//! What each request asks for: a batch of entities drawn from a scrambled Zipf distribution, or
//! read from a trace, as a pure function of `(connection, k)` for request `k` of that connection.
//! The sender draws the entities to build a request and the receiver draws them again to check
//! the reply, so nothing per request is stored in between.

use std::path::Path;
use std::sync::Arc;

use crate::keys::{parse_key, warm_count, write_key};
use crate::rng::{mix64, Rng};
use crate::scramble::Scrambler;
use crate::spec::BatchSpec;
use crate::zipf::{top1_count, top_share, Zipf};

/// An entity of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity<'a> {
    /// Entity id `i`: key `{prefix}{i}`.
    Id(u64),
    /// A key from a trace that is not `{prefix}{number}`, used verbatim.
    Raw(&'a [u8]),
}

/// Entity ids recorded one per line, replayed in order.
#[derive(Debug, Clone)]
pub struct Trace {
    pub items: Vec<TraceItem>,
    /// Share of the trace's requests that went to its most frequent 1% of distinct keys.
    pub top1_share: f64,
    pub distinct: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TraceItem {
    Id(u64),
    Key(Box<[u8]>),
}

impl Trace {
    /// Reads a trace: one entity per line, either a number `i` (the key `{prefix}{i}`), a full key
    /// `{prefix}{i}`, or any other non-empty line, taken as a raw key. Blank lines and lines
    /// starting with `#` are skipped.
    pub fn load(path: &Path, prefix: &[u8]) -> Result<Trace, String> {
        let text = std::fs::read(path)
            .map_err(|e| format!("cannot read trace {}: {e}", path.display()))?;
        let mut items = Vec::new();
        for line in text.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = line.trim_ascii();
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            let item = if line.iter().all(u8::is_ascii_digit) && line.len() <= 19 {
                TraceItem::Id(
                    std::str::from_utf8(line)
                        .unwrap_or("0")
                        .parse()
                        .unwrap_or(0),
                )
            } else if let Some(id) = parse_key(line, prefix) {
                TraceItem::Id(id)
            } else {
                TraceItem::Key(line.into())
            };
            items.push(item);
        }
        if items.is_empty() {
            return Err(format!("trace {} holds no entity", path.display()));
        }
        let mut counts = std::collections::HashMap::new();
        for it in &items {
            *counts.entry(it).or_insert(0u64) += 1;
        }
        let mut freq: Vec<u64> = counts.values().copied().collect();
        freq.sort_unstable_by(|a, b| b.cmp(a));
        let top = top1_count(freq.len() as u64) as usize;
        let top1_share = freq[..top].iter().sum::<u64>() as f64 / items.len() as f64;
        Ok(Trace {
            distinct: freq.len(),
            items,
            top1_share,
        })
    }
}

/// The workload shared by every connection of a run.
#[derive(Debug, Clone)]
pub struct Workload {
    pub entities: u64,
    pub zipf_s: f64,
    pub seed: u64,
    pub batch: BatchSpec,
    pub cold_fraction: f64,
    zipf: Zipf,
    scrambler: Scrambler,
    top1: u64,
    pub trace: Option<Arc<Trace>>,
}

impl Workload {
    pub fn new(
        entities: u64,
        zipf_s: f64,
        seed: u64,
        batch: BatchSpec,
        cold_fraction: f64,
        trace: Option<Arc<Trace>>,
    ) -> Result<Workload, String> {
        if !(0.0..=1.0).contains(&cold_fraction) {
            return Err(format!(
                "--cold-fraction must be within 0..1, got {cold_fraction}"
            ));
        }
        Ok(Workload {
            entities,
            zipf_s,
            seed,
            batch,
            cold_fraction,
            zipf: Zipf::new(entities, zipf_s)?,
            scrambler: Scrambler::new(entities, seed),
            top1: top1_count(entities),
            trace,
        })
    }

    /// Ids at or above this were never seeded.
    pub fn warm_count(&self) -> u64 {
        warm_count(self.entities, self.cold_fraction)
    }

    /// The share of entities the top 1% of keys should get (analytic), for the Zipf workload.
    pub fn expected_top1_share(&self) -> f64 {
        top_share(self.top1, self.entities, self.zipf_s)
    }

    /// Calls `f(entity, in_top_1%)` for each entity of request `k` of connection `conn` (of
    /// `conns`), and returns how many there were.
    #[inline]
    pub fn entities_of(
        &self,
        conn: u64,
        conns: u64,
        k: u64,
        mut f: impl FnMut(Entity<'_>, bool),
    ) -> u32 {
        let mut rng = Rng::derive(self.seed ^ mix64(conn.wrapping_add(1)), k);
        let n = if self.batch.is_fixed() {
            self.batch.min
        } else {
            rng.range_inclusive(self.batch.min as u64, self.batch.max as u64) as u32
        };
        match &self.trace {
            None => {
                for _ in 0..n {
                    let rank = self.zipf.sample(&mut rng);
                    f(
                        Entity::Id(self.scrambler.permute(rank - 1)),
                        rank <= self.top1,
                    );
                }
            }
            Some(t) => {
                let len = t.items.len() as u64;
                let pos = (k.wrapping_mul(conns).wrapping_add(conn))
                    .wrapping_mul(self.batch.max as u64)
                    % len;
                for i in 0..n as u64 {
                    match &t.items[((pos + i) % len) as usize] {
                        TraceItem::Id(id) => f(Entity::Id(*id), false),
                        TraceItem::Key(key) => f(Entity::Raw(key), false),
                    }
                }
            }
        }
        n
    }
}

/// Appends the key of `e` (with `prefix` for ids) to `out`.
#[inline]
pub fn write_entity_key(out: &mut Vec<u8>, prefix: &[u8], e: Entity<'_>) {
    match e {
        Entity::Id(id) => write_key(out, prefix, id),
        Entity::Raw(k) => out.extend_from_slice(k),
    }
}

/// Writes a trace of `count` entity ids drawn like `run` would (Zipf over `entities`, scrambled),
/// one per line.
pub fn write_trace(
    path: &Path,
    entities: u64,
    zipf_s: f64,
    seed: u64,
    count: u64,
) -> Result<(), String> {
    use std::io::Write;
    let w = Workload::new(
        entities,
        zipf_s,
        seed,
        BatchSpec { min: 1, max: 1 },
        0.0,
        None,
    )?;
    let file = std::fs::File::create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for k in 0..count {
        let mut line = Ok(());
        w.entities_of(0, 1, k, |e, _| {
            if let Entity::Id(id) = e {
                line = writeln!(out, "{id}");
            }
        });
        line.map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    out.flush()
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_reproducible_and_sized() {
        let w = Workload::new(1000, 0.99, 5, BatchSpec { min: 3, max: 9 }, 0.0, None).unwrap();
        for k in 0..200 {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let n = w.entities_of(2, 4, k, |e, _| a.push(format!("{e:?}")));
            w.entities_of(2, 4, k, |e, _| b.push(format!("{e:?}")));
            assert_eq!(a, b);
            assert!((3..=9).contains(&n));
            assert_eq!(a.len(), n as usize);
        }
    }

    #[test]
    fn traces_load_and_replay() {
        let dir = std::env::temp_dir().join(format!("loadgen-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.txt");
        std::fs::write(&path, "# comment\n7\nu:8\n\nsomething-else\n7\r\n").unwrap();
        let t = Trace::load(&path, b"u:").unwrap();
        assert_eq!(
            t.items,
            vec![
                TraceItem::Id(7),
                TraceItem::Id(8),
                TraceItem::Key(b"something-else".to_vec().into()),
                TraceItem::Id(7)
            ]
        );
        assert_eq!(t.distinct, 3);
        assert!((t.top1_share - 0.5).abs() < 1e-9);
        let w = Workload::new(
            10,
            0.99,
            1,
            BatchSpec { min: 2, max: 2 },
            0.0,
            Some(Arc::new(t)),
        )
        .unwrap();
        let mut seen = Vec::new();
        for k in 0..2 {
            w.entities_of(0, 1, k, |e, _| {
                let mut key = Vec::new();
                write_entity_key(&mut key, b"u:", e);
                seen.push(String::from_utf8(key).unwrap());
            });
        }
        assert_eq!(seen, ["u:7", "u:8", "something-else", "u:7"]);

        let gen = dir.join("gen.txt");
        write_trace(&gen, 1000, 0.99, 3, 500).unwrap();
        let t = Trace::load(&gen, b"u:").unwrap();
        assert_eq!(t.items.len(), 500);
        assert!(t.top1_share > 0.2, "{}", t.top1_share);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
