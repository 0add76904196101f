//! Coalesced, single-flight store reads for one shard.
//!
//! Requests hand their read keys to the coalescer and wait. Keys collect in the shard's next
//! batch until the shard has no more ready work (the flusher yields once to let every runnable
//! task add its keys) or the batch reaches its size cap; then the whole batch goes to the backend
//! at once. There is no timer that waits to collect more: at low load a key leaves on the next
//! turn of the event loop, and batches grow only when load does. A key already on its way to the
//! store is not asked for twice: a later request joins the read in flight (single-flight).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::store::{Backend, Fetched, ReadKey};
use crate::telemetry::counters::ShardStats;

/// The outcome of one batch: what the store answered for each key, in order.
pub type BatchResult = Vec<Fetched>;

/// One batch of reads on its way: the keys it carries and, once it lands, its outcomes.
pub struct Batch {
    keys: RefCell<Vec<ReadKey>>,
    result: RefCell<Option<Rc<BatchResult>>>,
    /// The requests waiting for the batch to land (one thread: a list, not a `Notify`'s lock).
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
            keys: RefCell::new(Vec::new()),
            result: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
            written_meanwhile: RefCell::new(Vec::new()),
            deadline: Cell::new(None),
        })
    }

    /// Waits for the batch to land.
    pub async fn wait(&self) -> Rc<BatchResult> {
        std::future::poll_fn(|cx| {
            if let Some(r) = self.result.borrow().as_ref() {
                return Poll::Ready(r.clone());
            }
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
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

    /// The result if the batch has landed.
    pub fn result(&self) -> Option<Rc<BatchResult>> {
        self.result.borrow().clone()
    }

    /// True once the batch has landed.
    pub fn is_done(&self) -> bool {
        self.result.borrow().is_some()
    }

    fn complete(&self, result: BatchResult) {
        *self.result.borrow_mut() = Some(Rc::new(result));
        for waiter in self.waiters.take() {
            waiter.wake();
        }
    }
}

/// Where one requested key's value will be found: slot `index` of `batch`.
#[derive(Clone)]
pub struct Pending {
    pub batch: Rc<Batch>,
    pub index: usize,
}

struct State {
    /// The batch collecting keys now.
    open: Rc<Batch>,
    /// Batches full or closed, waiting for the flusher.
    sealed: Vec<Rc<Batch>>,
    /// Keys on their way to the store, so a second request joins instead of asking again.
    /// Hashed with foldhash (randomly seeded per map, like std's default, at a fraction of
    /// SipHash's cost): the map is probed twice for every key read.
    in_flight: foldhash::HashMap<ReadKey, Pending>,
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
                in_flight: foldhash::HashMap::default(),
            }),
            wake: Notify::new(),
        })
    }

    /// Queues a read of `key` (or joins one in flight) and says where its value will land.
    pub fn enqueue(&self, key: ReadKey, deadline: Instant) -> Pending {
        let mut st = self.state.borrow_mut();
        if let Some(p) = st.in_flight.get(&key) {
            self.stats.singleflight_joins.inc();
            // Extends the wait only if the batch has not left yet; one in flight keeps its own.
            p.batch.extend_deadline(deadline);
            return p.clone();
        }
        if st.open.keys.borrow().len() >= self.batch_cap {
            let full = std::mem::replace(&mut st.open, Batch::new());
            st.sealed.push(full);
        }
        let batch = st.open.clone();
        batch.extend_deadline(deadline);
        let index = {
            let mut keys = batch.keys.borrow_mut();
            keys.push(key.clone());
            keys.len() - 1
        };
        let pending = Pending { batch, index };
        st.in_flight.insert(key, pending.clone());
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
        for k in keys {
            if let Some(p) = st.in_flight.remove(k) {
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
                if !st.open.keys.borrow().is_empty() {
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
        let keys = std::mem::take(&mut *batch.keys.borrow_mut());
        let timeout = batch
            .deadline
            .get()
            .map_or(Duration::ZERO, |d| {
                d.saturating_duration_since(Instant::now())
            })
            .max(Duration::from_millis(1));
        let result = self.backend.read(&keys, timeout).await;
        {
            let mut st = self.state.borrow_mut();
            for k in &keys {
                if st
                    .in_flight
                    .get(k)
                    .is_some_and(|p| Rc::ptr_eq(&p.batch, &batch))
                {
                    st.in_flight.remove(k);
                }
            }
        }
        batch.complete(result);
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
