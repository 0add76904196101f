//! Coalesced, single-flight store reads for one shard.
//!
//! Requests hand their read keys to the coalescer and wait. Keys collect in the shard's next
//! batch until the shard has no more ready work (the flusher yields once to let every runnable
//! task add its keys) or the batch reaches its size cap; then the whole batch goes to the backend
//! at once. There is no timer that waits to collect more: at low load a key leaves on the next
//! turn of the event loop, and batches grow only when load does. A key already on its way to the
//! store is not asked for twice: a later request joins the read in flight (single-flight).
//!
//! A batch lands key by key, not as a whole: the backend puts each node's answers into the batch
//! as that node answers ([`Landing`]), and each request waits only for its own keys. A batch
//! spanning a frozen Redis node and healthy ones answers the healthy nodes' keys at once.

use std::cell::{Cell, OnceCell, RefCell};
use std::hash::BuildHasher;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use hashbrown::hash_table::{Entry, HashTable};
use tokio::sync::Notify;

use crate::store::{Backend, Failure, Fetched, Landing, ReadKey};
use crate::telemetry::counters::ShardStats;

/// The outcomes of one batch, in key order: each set once, when its node answers (so that a
/// row served in place is never moved or changed under the reply that borrows it).
pub type BatchResult = [OnceCell<Fetched>];

/// One batch of reads on its way: the keys it carries and, once it lands, its outcomes.
pub struct Batch {
    /// The keys while the batch collects them.
    open_keys: RefCell<Vec<ReadKey>>,
    /// The keys once the batch has left for the store: read-only from then on, so the backend
    /// borrows them across its await while later requests still compare against them.
    sent_keys: OnceCell<Vec<ReadKey>>,
    /// Each key's hash in the shard's table of reads in flight, so that landing finds its
    /// entries without hashing or comparing the keys again.
    hashes: RefCell<Vec<u64>>,
    /// Made when the batch leaves for the store; each slot filled as its node answers.
    result: OnceCell<Rc<BatchResult>>,
    /// The requests waiting for keys of the batch to land (one thread: a list, not a `Notify`'s
    /// lock). Woken whenever a part lands; each looks at its own keys again.
    waiters: RefCell<Vec<Waker>>,
    /// Slots whose key was written while this read was in flight: their values may predate the
    /// write, so they are served to the requests that were already waiting but never cached.
    written_meanwhile: RefCell<Vec<usize>>,
    /// The latest deadline of the requests waiting on this batch: the read may take until then.
    deadline: Cell<Option<Instant>>,
}

impl Batch {
    fn new() -> Rc<Batch> {
        Rc::new(Batch {
            open_keys: RefCell::new(Vec::new()),
            sent_keys: OnceCell::new(),
            hashes: RefCell::new(Vec::new()),
            result: OnceCell::new(),
            waiters: RefCell::new(Vec::new()),
            written_meanwhile: RefCell::new(Vec::new()),
            deadline: Cell::new(None),
        })
    }

    /// Waits for slot `index` to land (whatever the batch's other keys do).
    pub async fn wait_for(&self, index: usize) {
        std::future::poll_fn(|cx| {
            if self.has_landed(index) {
                return Poll::Ready(());
            }
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// True when slot `index` holds `key`. The in-flight table keeps no copy of its keys (each
    /// would be another `Bytes` clone and drop, two atomic operations per key, and a table entry
    /// three times the size): a probe that matches a hash compares against the batch's own.
    fn holds(&self, index: usize, key: &ReadKey) -> bool {
        match self.sent_keys.get() {
            Some(keys) => keys.get(index) == Some(key),
            None => self.open_keys.borrow().get(index) == Some(key),
        }
    }

    fn len(&self) -> usize {
        match self.sent_keys.get() {
            Some(keys) => keys.len(),
            None => self.open_keys.borrow().len(),
        }
    }

    fn extend_deadline(&self, deadline: Instant) {
        if self.deadline.get().is_none_or(|d| d < deadline) {
            self.deadline.set(Some(deadline));
        }
    }

    /// False when slot `index`'s key was written while the read was in flight.
    pub fn cacheable(&self, index: usize) -> bool {
        !self.written_meanwhile.borrow().contains(&index)
    }

    /// The batch's outcomes, once it has left for the store (slots not landed yet are empty).
    pub fn result(&self) -> Option<&Rc<BatchResult>> {
        self.result.get()
    }

    /// True once slot `index`'s node has answered.
    pub fn has_landed(&self, index: usize) -> bool {
        self.result
            .get()
            .and_then(|r| r.get(index))
            .is_some_and(|o| o.get().is_some())
    }

    fn wake_waiters(&self) {
        for waiter in self.waiters.take() {
            waiter.wake();
        }
    }
}

/// A batch on its way, as its backend lands it: each outcome fills its slot; each part wakes the
/// requests waiting on the batch. The keys' entries in the table of reads in flight stay until
/// the whole batch is done (one pass, as cheap as before keys landed apart); a request that
/// meets the entry of a key that has landed meanwhile reads afresh (see [`Coalescer::enqueue`]).
struct Arrivals<'a> {
    batch: &'a Batch,
    result: &'a BatchResult,
}

impl Landing for Arrivals<'_> {
    fn put(&self, index: usize, fetched: Fetched) {
        if let Some(slot) = self.result.get(index) {
            // A second outcome for a slot is ignored, as the seam says.
            let _ = slot.set(fetched);
        }
    }

    fn landed(&self) {
        self.batch.wake_waiters();
    }
}

/// Where one requested key's value will be found: slot `index` of `batch`.
#[derive(Clone)]
pub struct Pending {
    pub batch: Rc<Batch>,
    pub index: usize,
}

impl Pending {
    /// True once the key's node has answered.
    pub fn has_landed(&self) -> bool {
        self.batch.has_landed(self.index)
    }
}

/// A key on its way to the store: its hash and where it (and its value) will be.
struct InFlight {
    hash: u64,
    pending: Pending,
}

struct State {
    /// The batch collecting keys now.
    open: Rc<Batch>,
    /// Batches full or closed, waiting for the flusher.
    sealed: Vec<Rc<Batch>>,
    /// Keys on their way to the store, so a second request joins instead of asking again.
    /// Each key is hashed once, when it is queued: queueing probes the table once (join or
    /// insert), and landing removes each entry by its kept hash and its batch slot, without
    /// comparing key bytes (on a busy shard the table outgrows the CPU's caches, and each probe
    /// and key compare was a cache miss).
    in_flight: HashTable<InFlight>,
    /// foldhash, randomly seeded per shard (the keys come from clients), at a fraction of
    /// SipHash's cost.
    hasher: foldhash::fast::RandomState,
}

/// A shard's coalescer: batches and deduplicates the reads of every request on the shard.
pub struct Coalescer {
    backend: Rc<dyn Backend>,
    stats: Arc<ShardStats>,
    batch_cap: usize,
    state: RefCell<State>,
    wake: Notify,
}

impl Coalescer {
    pub fn new(
        backend: Rc<dyn Backend>,
        stats: Arc<ShardStats>,
        batch_cap: usize,
    ) -> Rc<Coalescer> {
        Rc::new(Coalescer {
            backend,
            stats,
            batch_cap: batch_cap.max(1),
            state: RefCell::new(State {
                open: Batch::new(),
                sealed: Vec::new(),
                in_flight: HashTable::new(),
                hasher: foldhash::fast::RandomState::default(),
            }),
            wake: Notify::new(),
        })
    }

    /// Queues a read of `key` (or joins one in flight) and says where its value will land.
    pub fn enqueue(&self, key: ReadKey, deadline: Instant) -> Pending {
        let mut st = self.state.borrow_mut();
        let State {
            open,
            sealed,
            in_flight,
            hasher,
        } = &mut *st;
        let hash = hasher.hash_one(&key);
        let held = |e: &InFlight| e.pending.batch.holds(e.pending.index, &key);
        let slot = match in_flight.entry(hash, held, |e| e.hash) {
            // Landed while the rest of its batch waits on another node: not in flight any more,
            // so this request reads afresh and its read takes the entry.
            Entry::Occupied(landed) if landed.get().pending.has_landed() => landed.remove().1,
            Entry::Occupied(joined) => {
                self.stats.singleflight_joins.inc();
                let p = &joined.get().pending;
                // Extends the wait only if the batch has not left yet; one in flight keeps its own.
                p.batch.extend_deadline(deadline);
                return p.clone();
            }
            Entry::Vacant(slot) => slot,
        };
        if open.len() >= self.batch_cap {
            sealed.push(std::mem::replace(open, Batch::new()));
        }
        let batch = open.clone();
        batch.extend_deadline(deadline);
        let index = {
            let mut keys = batch.open_keys.borrow_mut();
            keys.push(key);
            batch.hashes.borrow_mut().push(hash);
            keys.len() - 1
        };
        let pending = Pending { batch, index };
        slot.insert(InFlight {
            hash,
            pending: pending.clone(),
        });
        drop(st);
        // The first key of a batch wakes the flusher; the keys that follow join that batch
        // before the flusher takes it (it yields to every runnable task first), so they need
        // not wake it again.
        if index == 0 {
            self.wake.notify_one();
        }
        pending
    }

    /// Forgets reads in flight for these keys, so a request that starts after a write does not
    /// join a read that may have been answered before the write landed.
    pub fn forget(&self, keys: &[ReadKey]) {
        let mut st = self.state.borrow_mut();
        let State {
            in_flight, hasher, ..
        } = &mut *st;
        for k in keys {
            let held = |e: &InFlight| e.pending.batch.holds(e.pending.index, k);
            if let Ok(entry) = in_flight.find_entry(hasher.hash_one(k), held) {
                let (gone, _) = entry.remove();
                let p = gone.pending;
                p.batch.written_meanwhile.borrow_mut().push(p.index);
            }
        }
    }

    /// The shard's flusher: runs until the shard stops. Each wake-up yields once so that every
    /// task already runnable adds its keys, then sends every batch collected so far.
    pub async fn run_flusher(self: Rc<Self>) {
        loop {
            self.wake.notified().await;
            yield_to_queue().await;
            let batches = {
                let mut st = self.state.borrow_mut();
                let mut out = std::mem::take(&mut st.sealed);
                if st.open.len() > 0 {
                    out.push(std::mem::replace(&mut st.open, Batch::new()));
                }
                out
            };
            for batch in batches {
                let me = self.clone();
                tokio::task::spawn_local(async move { me.execute(batch).await });
            }
        }
    }

    async fn execute(&self, batch: Rc<Batch>) {
        let keys = batch.open_keys.take();
        let keys = batch.sent_keys.get_or_init(|| keys);
        let hashes = std::mem::take(&mut *batch.hashes.borrow_mut());
        let timeout = batch
            .deadline
            .get()
            .map_or(Duration::ZERO, |d| {
                d.saturating_duration_since(Instant::now())
            })
            .max(Duration::from_millis(1));
        let result = batch
            .result
            .get_or_init(|| keys.iter().map(|_| OnceCell::new()).collect());
        let arrivals = Arrivals {
            batch: &batch,
            result,
        };
        self.backend.read(keys, timeout, &arrivals).await;
        // The backend owes every key an outcome; one it did not give fails alone, rather than
        // leaving its requests to wait out their deadlines.
        if result.iter().any(|o| o.get().is_none()) {
            for index in 0..result.len() {
                arrivals.put(index, Fetched::Failed(Failure::Unavailable));
            }
            arrivals.landed();
        }
        // A key forgotten (written) while in flight has no entry for this batch any more, and the
        // request that queued it since has another batch: only entries that point at this
        // batch's own slots go.
        let in_flight = &mut self.state.borrow_mut().in_flight;
        for (index, &hash) in hashes.iter().enumerate() {
            let ours =
                |e: &InFlight| e.pending.index == index && Rc::ptr_eq(&e.pending.batch, &batch);
            if let Ok(entry) = in_flight.find_entry(hash, ours) {
                entry.remove();
            }
        }
    }
}

/// Lets every task already runnable run before this one goes on, without polling the event
/// loop: `yield_now` defers its wake until after an I/O poll, which costs an `epoll_wait` per
/// flush; a wake during the poll puts the task at the back of the run queue instead.
async fn yield_to_queue() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::test_store::{user_features, TestStore};

    fn same(a: &Pending, b: &Pending) -> bool {
        Rc::ptr_eq(&a.batch, &b.batch) && a.index == b.index
    }

    #[tokio::test]
    async fn a_key_is_read_once_while_in_flight_and_again_after_a_write_or_its_landing() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (_, view) = user_features();
                let store = Rc::new(TestStore::holding(view));
                let key = |entity| store.key(entity);
                let stats = Arc::new(ShardStats::new(0, 1));
                let c = Coalescer::new(store.clone(), stats.clone(), 1024);
                tokio::task::spawn_local(c.clone().run_flusher());
                let deadline = Instant::now() + Duration::from_secs(5);

                // Before the flush: the second "a" joins the first.
                let a1 = c.enqueue(key("a"), deadline);
                let a2 = c.enqueue(key("a"), deadline);
                let b1 = c.enqueue(key("b"), deadline);
                assert!(same(&a1, &a2));
                assert_eq!(store.reads(1).await, [vec!["a", "b"]]);

                // In flight: "a" joins the read on its way; a write to "b" makes the next
                // request for it read again, and its slot in the first read uncacheable.
                let a3 = c.enqueue(key("a"), deadline);
                assert!(same(&a1, &a3));
                c.forget(&[key("b")]);
                let b2 = c.enqueue(key("b"), deadline);
                assert!(!Rc::ptr_eq(&b1.batch, &b2.batch));
                assert_eq!(store.reads(2).await[1], ["b"]);

                // The first read lands. Its own entries go; the second read of "b" stays in
                // flight, so a request for "b" joins it instead of reading a third time.
                store.land(1);
                a1.batch.wait_for(a1.index).await;
                assert!(b1.batch.has_landed(b1.index), "a read lands as a whole");
                assert_eq!(a1.batch.result().map(|r| r.len()), Some(2));
                assert!(a1.batch.cacheable(a1.index));
                assert!(!b1.batch.cacheable(b1.index));
                assert!(!b2.batch.has_landed(b2.index));
                let b3 = c.enqueue(key("b"), deadline);
                assert!(same(&b2, &b3));
                // "a" has landed: asking again is a new read.
                let a4 = c.enqueue(key("a"), deadline);
                assert!(!Rc::ptr_eq(&a4.batch, &a1.batch));
                assert_eq!(store.reads(3).await[2], ["a"]);
                assert_eq!(stats.singleflight_joins.get(), 3, "a2, a3 and b3 joined");

                store.land(2);
                a4.batch.wait_for(a4.index).await;
                b2.batch.wait_for(b2.index).await;
                assert!(
                    c.state.borrow().in_flight.is_empty(),
                    "nothing left in flight"
                );
            })
            .await;
    }

    #[tokio::test]
    async fn a_key_that_landed_while_its_batch_waits_on_another_node_is_read_afresh() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (_, view) = user_features();
                let store = Rc::new(TestStore::new(view));
                let key = |entity| store.key(entity);
                let stats = Arc::new(ShardStats::new(0, 1));
                let c = Coalescer::new(store.clone(), stats.clone(), 1024);
                tokio::task::spawn_local(c.clone().run_flusher());
                let deadline = Instant::now() + Duration::from_secs(30);

                // One batch: "u1" lands at once, "frozen-1" waits for the read's timeout.
                let u1 = c.enqueue(key("u1"), deadline);
                let frozen = c.enqueue(key("frozen-1"), deadline);
                assert!(Rc::ptr_eq(&u1.batch, &frozen.batch));
                u1.batch.wait_for(u1.index).await;
                assert!(!frozen.has_landed());

                // "u1" is no longer in flight: asking again is a new read; "frozen-1" still is.
                let again = c.enqueue(key("u1"), deadline);
                assert!(!Rc::ptr_eq(&again.batch, &u1.batch));
                assert!(same(&c.enqueue(key("frozen-1"), deadline), &frozen));
                assert_eq!(stats.singleflight_joins.get(), 1, "only frozen-1 joined");
                assert_eq!(store.reads(2).await[1], ["u1"]);
                again.batch.wait_for(again.index).await;
            })
            .await;
    }
}
