//! The reading stage: a view and a batch of entity keys in, one status, age and row per entity
//! out. Rows come from the shard's hot [`cache`] or through the [`coalescer`] from the store,
//! are judged by [`freshness`], and stay coherent with writes through [`coherence`].
//!
//! This stage never names Redis: it sees the store only through [`crate::store`]'s seam (a
//! view's [`Layout`](crate::store::Layout) and the shard's [`Backend`]).

mod answers;
pub mod cache;
pub mod coalescer;
pub mod coherence;
pub mod finite;
pub mod freshness;
pub mod sampler;
mod spares;
#[cfg(test)]
mod test_store;

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use featureproxy_protocol::{Keys, Status};

use crate::config::current::Current;
use crate::config::registry::View;
use crate::store::{Backend, Change, KeyBlock, ReadKey, ViewId};
use crate::telemetry::counters::{CacheGauges, Served, ShardStats};
use crate::telemetry::histograms::ShardHistograms;
use crate::telemetry::values::ShardValues;
use crate::telemetry::Recorders;
pub use answers::Answers;
use answers::{put_row, Judged};
use cache::{HotCache, KeyList, Probe};
use coalescer::{Coalescer, Pending};
use sampler::Sampler;
use spares::{Buffers, Spares};

/// One shard's reading stage. Owned by the shard's thread: nothing here is shared with another
/// shard, so no lock is ever taken.
pub struct Reader {
    shard: u16,
    registry: Rc<Current>,
    cache: RefCell<HotCache>,
    coalescer: Rc<Coalescer>,
    backend: Rc<dyn Backend>,
    stats: Arc<ShardStats>,
    histograms: Rc<RefCell<ShardHistograms>>,
    /// Tallies of served values, shipped with the histograms.
    values: Rc<RefCell<ShardValues>>,
    /// Picks the served entities whose values are tallied.
    sampler: RefCell<Sampler>,
    /// Buffers every lookup needs, reused so that a lookup allocates only what it hands on.
    scratch: RefCell<Scratch>,
    /// What a read hands on (its sources, rows and answers), kept once its reply is encoded.
    spares: RefCell<Spares>,
}

#[derive(Default)]
struct Scratch {
    /// One cache key, for inserts and invalidations.
    key: Vec<u8>,
    /// A request's cache keys, for the batched lookup.
    keys: KeyList,
    probes: Vec<Probe>,
    /// Entity index and when its row was computed: the cache hits when a read starts, the rows
    /// to cache when it finishes.
    hits: Vec<(usize, u64)>,
    /// The store reads of a request's misses, built together, and the entity index of each.
    reads: KeyBlock,
    read_entities: Vec<usize>,
}

/// A read under way: where each entity's answer will come from (its buffers' `sources`), and
/// the rows found so far (in their `block`).
pub struct Lookup {
    bufs: Box<Buffers>,
}

impl Lookup {
    /// True when no answer waits on the store: every entity came from the cache, or gets its
    /// defaults, or its node has already answered.
    pub fn is_ready(&self) -> bool {
        self.bufs.sources.iter().all(|s| match s {
            Source::Store(p) => p.has_landed(),
            Source::Cached { .. } | Source::Unavailable | Source::NoSuchKey => true,
        })
    }

    /// Waits for the store's answers, up to `deadline`.
    pub async fn wait(&self, deadline: Instant) {
        wait_until(&self.bufs.sources, deadline).await
    }
}

/// Where one entity's answer comes from.
enum Source {
    /// From the hot cache: the row is already in the lookup's rows.
    Cached {
        computed_at_ms: u64,
    },
    Store(Pending),
    /// The breaker of the node holding the entity is open: defaults without asking.
    Unavailable,
    /// The entity key cannot name a row of the view (see
    /// [`Layout::read_key_into`](crate::store::Layout::read_key_into)): INVALID.
    NoSuchKey,
}

impl Reader {
    pub fn new(
        shard: u16,
        registry: Rc<Current>,
        cache: HotCache,
        coalescer: Rc<Coalescer>,
        backend: Rc<dyn Backend>,
        stats: Arc<ShardStats>,
        recorders: Recorders,
    ) -> Reader {
        let Recorders { histograms, values } = recorders;
        Reader {
            shard,
            registry,
            cache: RefCell::new(cache),
            coalescer,
            backend,
            stats,
            histograms,
            values,
            sampler: RefCell::new(Sampler::seeded()),
            scratch: RefCell::new(Scratch::default()),
            spares: RefCell::new(Spares::default()),
        }
    }

    /// Starts a read at `now` (when the request was read): finds the entities in the hot cache
    /// (all at once), queues the reads of the rest in the coalescer, or (while their node's
    /// breaker is open) settles for their defaults. When the returned lookup
    /// [is ready](Lookup::is_ready), [`Reader::finish`] answers at once.
    pub fn start(
        &self,
        view: &View,
        entities: &Keys,
        use_cache: bool,
        now: Instant,
        deadline: Instant,
    ) -> Lookup {
        let rb = view.row_bytes;
        let mut bufs = self.spares.borrow_mut().take();
        let rows = &mut bufs.block;
        rows.resize(entities.len() * rb, 0);
        let mut scratch = self.scratch.borrow_mut();
        let Scratch {
            keys,
            probes,
            hits,
            reads,
            read_entities,
            ..
        } = &mut *scratch;
        hits.clear();
        if use_cache {
            keys.clear();
            for entity in entities.iter() {
                keys.push_with(|b| cache_key_into(b, view.id, entity));
            }
            let mut cache = self.cache.borrow_mut();
            cache.get_many(keys, now, probes, |i, hit| {
                put_row(&mut rows[i * rb..(i + 1) * rb], hit.row);
                hits.push((i, hit.computed_at_ms));
            });
            if let Some(vs) = self.stats.view(view.id) {
                vs.cache_hits.add(hits.len() as u64);
                vs.cache_misses.add((entities.len() - hits.len()) as u64);
            }
        }
        // Each entity's source; a miss's read is built first (all of them into one buffer) and
        // its source set once the reads are made.
        let mut next_hit = hits.iter().peekable();
        read_entities.clear();
        for (i, entity) in entities.iter().enumerate() {
            let source = match next_hit.next_if(|h| h.0 == i) {
                Some(&(_, computed_at_ms)) => Source::Cached { computed_at_ms },
                None => {
                    if reads.push(&view.layout, entity) {
                        read_entities.push(i);
                    }
                    Source::NoSuchKey
                }
            };
            bufs.sources.push(source);
        }
        if !read_entities.is_empty() {
            let all = self.backend.admits_all(now);
            for (&i, read) in read_entities.iter().zip(reads.drain()) {
                bufs.sources[i] = if all || self.backend.admits(&read, now) {
                    Source::Store(self.coalescer.enqueue(read, deadline))
                } else {
                    Source::Unavailable
                };
            }
        }
        Lookup { bufs }
    }

    /// Answers a started read with whatever has arrived: what is still missing is DEGRADED.
    /// Judges what each entity got, fills the cache with what the store answered, and counts.
    /// This is where served values are tapped: every entity served (cache hits included) is
    /// a candidate for the view's sample, and its row, as served, is tallied.
    pub fn finish(&self, view: &View, entities: &Keys, lookup: Lookup) -> Answers {
        let Lookup { mut bufs } = lookup;
        let mut sources = std::mem::take(&mut bufs.sources);
        let mut answers = Answers::new(entities.len(), view.row_bytes, bufs);
        let mut served = Served::default();
        let now_ms = freshness::now_ms();
        let mut scratch = self.scratch.borrow_mut();
        let Scratch {
            keys, probes, hits, ..
        } = &mut *scratch;
        // What the store answered and may be cached: cache keys in `keys`, (entity index,
        // computed-at) in `hits`, inserted all at once below.
        keys.clear();
        hits.clear();
        let mut histograms = self.histograms.borrow_mut();
        let mut values = self.values.borrow_mut();
        let tally = values.view(view);
        let mut sampler = self.sampler.borrow_mut();
        let rate = view.watch.sample_rate;
        let n = entities.len();
        let mut next_sample = sampler.next_in(view.id, rate, 0, n);
        for (i, (entity, source)) in entities.iter().zip(&sources).enumerate() {
            let judged = match source {
                Source::Cached { computed_at_ms } => {
                    Answers::judge_cached(view, *computed_at_ms, now_ms)
                }
                Source::Store(p) => {
                    let judged = answers.judge_fetched(view, i, p, now_ms, tally);
                    if matches!(judged.status, Status::Fresh | Status::Stale)
                        && p.batch.cacheable(p.index)
                    {
                        keys.push_with(|b| cache_key_into(b, view.id, entity));
                        hits.push((i, judged.computed_at_ms));
                    }
                    judged
                }
                Source::Unavailable => Judged::defaults(Status::Degraded),
                Source::NoSuchKey => Judged::defaults(Status::Invalid),
            };
            let cached = matches!(source, Source::Cached { .. }) && !judged.status.is_default();
            served.count(judged.status, cached);
            if judged.computed_at_ms != 0 {
                histograms.record_age(view.id, judged.age);
            }
            answers.push(&judged, cached);
            if next_sample == Some(i) {
                if judged.status.is_default() {
                    tally.record_default();
                } else {
                    tally.record_row(answers.row(view, i));
                }
                next_sample = sampler.next_in(view.id, rate, i + 1, n);
            }
        }
        drop(sampler);
        drop(values);
        if let Some(vs) = self.stats.view(view.id) {
            vs.add_served(&served);
        }
        let mut cache = self.cache.borrow_mut();
        if !keys.is_empty() {
            let row = |j: usize| {
                let (i, computed_at_ms) = hits[j];
                (computed_at_ms, answers.row(view, i))
            };
            cache.insert_many(keys, row, view.hot_cache_ttl, Instant::now(), probes);
        }
        publish(&self.stats.cache, &cache);
        // Emptied now, so that the batches it named are not kept alive by the answers.
        sources.clear();
        answers.keep_sources(sources);
        answers
    }

    /// Takes back the buffers of answers whose reply has been encoded, for a later read.
    pub fn recycle(&self, answers: Answers) {
        self.spares.borrow_mut().give(answers.into_buffers());
    }

    /// Drops whatever this shard holds for rows that changed in the store.
    pub fn apply(&self, change: Change) {
        match change {
            Change::Keys(keys) => {
                let registry = self.registry.pin();
                for key in &keys {
                    for (view, entity) in registry.locate(key) {
                        let entity = match entity {
                            Cow::Borrowed(e) => key.slice_ref(e),
                            Cow::Owned(e) => Bytes::from(e),
                        };
                        self.invalidate(view, &[entity]);
                    }
                }
            }
            Change::Everything { why } => self.flush(why),
        }
    }

    /// Drops these entities of `view` from this shard's cache and from its reads in flight, so
    /// that a read which starts after a write sees the write.
    pub fn invalidate(&self, view: ViewId, entities: &[Bytes]) {
        let registry = self.registry.pin();
        let Some(view) = registry.by_id(view) else {
            return;
        };
        let mut cache = self.cache.borrow_mut();
        let mut scratch = self.scratch.borrow_mut();
        let Scratch { key, reads, .. } = &mut *scratch;
        for entity in entities {
            cache.invalidate(cache_key(key, view.id, entity));
            reads.push(&view.layout, entity);
        }
        publish(&self.stats.cache, &cache);
        drop(cache);
        let reads: Vec<ReadKey> = reads.drain().collect();
        drop(scratch);
        self.coalescer.forget(&reads);
    }

    /// Drops the whole cache: after the store was flushed, or when writes may have been missed.
    pub fn flush(&self, why: &str) {
        let mut cache = self.cache.borrow_mut();
        let entries = cache.entries();
        cache.clear();
        publish(&self.stats.cache, &cache);
        tracing::debug!(shard = self.shard, entries, why, "hot cache flushed");
    }
}

/// The cache key of an entity: its view's id, then its key. Built in `buf`, which is reused.
fn cache_key<'b>(buf: &'b mut Vec<u8>, view: ViewId, entity: &[u8]) -> &'b [u8] {
    buf.clear();
    cache_key_into(buf, view, entity);
    buf
}

fn cache_key_into(buf: &mut Vec<u8>, view: ViewId, entity: &[u8]) {
    buf.extend_from_slice(&view.to_le_bytes());
    buf.extend_from_slice(entity);
}

/// Copies the cache's own counts to the shard's gauges, for the operators' endpoint.
fn publish(gauges: &CacheGauges, cache: &HotCache) {
    let c = cache.counts();
    gauges.admissions.store(c.admissions, Relaxed);
    gauges.rejections.store(c.rejections, Relaxed);
    gauges.evictions.store(c.evictions, Relaxed);
    gauges.expirations.store(c.expirations, Relaxed);
    gauges.invalidations.store(c.invalidations, Relaxed);
    gauges.bytes.store(cache.bytes() as u64, Relaxed);
    gauges.entries.store(cache.entries() as u64, Relaxed);
    gauges.capacity.store(cache.capacity() as u64, Relaxed);
}

/// Waits for every key the request reads from the store, up to the deadline: each key only for
/// its own node, never for the other nodes of its batch. Past the deadline, whatever has not
/// landed is served as DEGRADED.
async fn wait_until(sources: &[Source], deadline: Instant) {
    for p in sources.iter().filter_map(|s| match s {
        Source::Store(p) => Some(p),
        _ => None,
    }) {
        if p.has_landed() {
            continue;
        }
        if tokio::time::timeout_at(deadline.into(), p.batch.wait_for(p.index))
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The reading stage against the tests' own store ([`test_store`](super::test_store)): a
    //! failure or an open breaker on some keys must degrade those keys only.

    use std::time::Duration;

    use super::test_store::{user_features, TestStore};
    use super::*;
    use crate::store::Layout;

    /// Start, wait, finish: what a GET does across its turns.
    async fn read(reader: &Reader, view: &View, entities: &[&str], deadline: Instant) -> Answers {
        let entities = Keys::from_slices(entities);
        let lookup = reader.start(view, &entities, true, Instant::now(), deadline);
        lookup.wait(deadline).await;
        reader.finish(view, &entities, lookup)
    }

    fn statuses(a: &Answers) -> Vec<(Status, bool)> {
        a.statuses().iter().map(|s| (s.status, s.cached)).collect()
    }

    /// Runs `test` with a reader over `backend`, on a current-thread runtime (with its flusher),
    /// as a shard runs it.
    fn with_reader(backend: Rc<TestStore>, test: impl AsyncFnOnce(Reader)) {
        let (registry, _) = user_features();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let stats = Arc::new(ShardStats::new(0, registry.views().len()));
            let coalescer = Coalescer::new(backend.clone(), stats.clone(), 1024);
            tokio::task::spawn_local(coalescer.clone().run_flusher());
            let views = registry.views().len();
            let reader = Reader::new(
                0,
                Rc::new(crate::config::current::Current::new(registry)),
                HotCache::new(1 << 20),
                coalescer,
                backend,
                stats,
                Recorders {
                    histograms: Rc::new(RefCell::new(ShardHistograms::new(views))),
                    values: Rc::new(RefCell::new(ShardValues::default())),
                },
            );
            test(reader).await
        });
    }

    #[test]
    fn a_failure_degrades_only_the_keys_it_touched() {
        let (_, view) = user_features();
        let backend = Rc::new(TestStore::new(view.clone()));
        with_reader(backend.clone(), async |reader| {
            let entities = ["u1", "down-1", "gone-1", "open-1", "u2"];
            let deadline = Instant::now() + Duration::from_secs(1);
            let first = read(&reader, &view, &entities, deadline).await;
            assert_eq!(
                statuses(&first),
                [
                    (Status::Fresh, false),
                    (Status::Degraded, false),
                    (Status::Missing, false),
                    (Status::Degraded, false),
                    (Status::Fresh, false),
                ]
            );
            let row = |a: &Answers, i: usize| a.row(&view, i).to_vec();
            assert_eq!(&row(&first, 0)[..4], &7.0f32.to_le_bytes());
            assert_eq!(row(&first, 1), view.default_row);
            assert_eq!(row(&first, 3), view.default_row);
            assert_eq!(
                backend.take_asked(),
                ["u1", "down-1", "gone-1", "u2"],
                "open-1 is never asked"
            );

            // Served rows are cached; defaults never are, so the failed keys are asked again.
            let second = read(&reader, &view, &entities, deadline).await;
            assert_eq!(
                statuses(&second),
                [
                    (Status::Fresh, true),
                    (Status::Degraded, false),
                    (Status::Missing, false),
                    (Status::Degraded, false),
                    (Status::Fresh, true),
                ]
            );
            assert_eq!(backend.take_asked(), ["down-1", "gone-1"]);

            // A notice of a write drops that row, and only that row, from the cache.
            let Layout::Packed(p) = &view.layout else {
                unreachable!("user_features is a packed view")
            };
            let key = Bytes::from([p.key_prefix(), b"u2"].concat());
            reader.apply(Change::Keys(vec![key]));
            let third = read(&reader, &view, &entities[..1], deadline).await;
            assert_eq!(statuses(&third), [(Status::Fresh, true)]);
            let u2 = read(&reader, &view, &entities[4..], deadline).await;
            assert_eq!(statuses(&u2), [(Status::Fresh, false)]);
            assert_eq!(backend.take_asked(), ["u2"]);
        });
    }

    #[test]
    fn recycled_buffers_serve_each_read_its_own_rows_and_nothing_of_the_last() {
        let (_, view) = user_features();
        let backend = Rc::new(TestStore::new(view.clone()));
        with_reader(backend.clone(), async |reader| {
            let deadline = Instant::now() + Duration::from_secs(1);
            // Read, then read again from the cache: the second read's block holds rows 1, 2, 3.
            let fetched = read(&reader, &view, &["n1", "n2", "n3"], deadline).await;
            reader.recycle(fetched);
            let cached = read(&reader, &view, &["n1", "n2", "n3"], deadline).await;
            assert_eq!(
                statuses(&cached),
                [
                    (Status::Fresh, true),
                    (Status::Fresh, true),
                    (Status::Fresh, true)
                ]
            );
            for (i, v) in [1.0, 2.0, 3.0].into_iter().enumerate() {
                assert_eq!(cached.row(&view, i), row_of(v));
            }
            reader.recycle(cached);
            let kept = reader.spares.borrow().bytes();
            assert!(kept > 0, "the answers' buffers are kept");

            // The next read takes those buffers, block bytes and all: each place serves this
            // read's own row or the defaults, never what the last read left there.
            let next = read(&reader, &view, &["n3", "down-1", "n1", "gone-1"], deadline).await;
            assert!(
                reader.spares.borrow().bytes() < kept,
                "a kept set was reused"
            );
            assert_eq!(
                statuses(&next),
                [
                    (Status::Fresh, true),
                    (Status::Degraded, false),
                    (Status::Fresh, true),
                    (Status::Missing, false),
                ]
            );
            assert_eq!(next.row(&view, 0), row_of(3.0));
            assert_eq!(next.row(&view, 1), view.default_row);
            assert_eq!(next.row(&view, 2), row_of(1.0));
            assert_eq!(next.row(&view, 3), view.default_row);
        });
    }

    #[test]
    fn a_frozen_node_holds_back_only_its_own_keys_not_the_rest_of_their_batch() {
        let (_, view) = user_features();
        let backend = Rc::new(TestStore::new(view.clone()));
        with_reader(backend.clone(), async |reader| {
            // Started in one turn, so both go out in one batch: the second GET's key shares a
            // read with a key of the frozen node, and with a patient deadline.
            let now = Instant::now();
            let short = now + Duration::from_millis(200);
            let mixed = Keys::from_slices(&["u1", "frozen-1", "n2"]);
            let healthy = Keys::from_slices(&["n3"]);
            let first = reader.start(&view, &mixed, true, now, short);
            let second = reader.start(&view, &healthy, true, now, now + Duration::from_secs(30));
            assert_eq!(backend.reads(1).await.len(), 1, "one batch");

            second.wait(now + Duration::from_secs(30)).await;
            assert!(second.is_ready());
            assert!(
                !first.is_ready(),
                "the healthy key was answered while the frozen one still waits"
            );
            let answers = reader.finish(&view, &healthy, second);
            assert_eq!(statuses(&answers), [(Status::Fresh, false)]);
            assert_eq!(answers.row(&view, 0), row_of(3.0));

            // The mixed GET finishes at its deadline: its healthy keys FRESH, the frozen one
            // DEGRADED with the defaults.
            first.wait(short).await;
            assert!(Instant::now() >= short);
            assert!(!first.is_ready(), "the frozen key has still not landed");
            let answers = reader.finish(&view, &mixed, first);
            assert_eq!(
                statuses(&answers),
                [
                    (Status::Fresh, false),
                    (Status::Degraded, false),
                    (Status::Fresh, false)
                ]
            );
            assert_eq!(answers.row(&view, 1), view.default_row);
            assert_eq!(answers.row(&view, 2), row_of(2.0));
        });
    }

    /// A `user_features` row of sixteen `v`s.
    fn row_of(v: f32) -> Vec<u8> {
        (0..16).flat_map(|_| v.to_le_bytes()).collect()
    }
}
