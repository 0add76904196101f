//! The blocking core behind the native `featureproxy.Client`: the Rust client
//! ([`featureproxy_client::Client`]) on a `current_thread` tokio runtime of its own, driven by the
//! threads that call it.
//!
//! No thread of its own: a call runs `block_on` on the calling thread (with the GIL released, by
//! the bindings). Among concurrent callers the first to enter drives the runtime (the sockets,
//! the timers and every connection's reader and writer tasks) and the others park until their
//! reply is in or the driver's role is free; tokio hands the role on. Measured against a
//! `multi_thread` runtime this halves the CPU per call: nothing is woken across threads when a
//! lone caller waits for its own reply.
//!
//! What the Python API asks of it beyond the Rust client's own behaviour:
//! - **Waits.** The Rust client bounds a call as a whole by its `timeout`; Python's bounds the wait
//!   for a reply by `timeout`, or by a GET's `deadline` when that is longer. The Rust client is
//!   therefore given no timeout of its own ([`NO_TIMEOUT`]) and every call is bounded here by the
//!   wait the bindings compute ([`Core::call`]).
//! - **Interruption.** A wait is cut into slices of [`SLICE`]; between two, a hook runs (the
//!   bindings check Python's signals there, so Ctrl-C ends a blocked call within about a slice)
//!   and a client closed meanwhile ends the call with [`Outcome::Closed`].
//! - **fork.** A child process must not touch what it inherited: the runtime's epoll instance is
//!   shared with the parent (deregistering a socket in the child would deregister it in the
//!   parent), its sockets are the parent's connections, and its locks may have been held by
//!   parent threads that do not exist in the child. A `pthread_atfork` handler bumps a counter;
//!   a [`Live`] made before the fork is then leaked whole ([`std::mem::forget`]), never dropped
//!   nor used, and the child connects afresh. The leaked file descriptors stay open in the child
//!   (closing them would be touching them) until it exits.
//! - **Idle connections.** A connection is read only while some caller drives the runtime, so a
//!   server that closed an idle connection is noticed at the next call. After an idle spell that
//!   call first lets the runtime read what came in ([`IDLE`]), so a closed connection is replaced
//!   before the request is sent on it rather than failing it. A call sooner than that (or one
//!   racing the server's close) may still send its request on the closed connection: the Rust
//!   client then sends a GET, PING or SCHEMA once more on a new connection, as no reply to it had
//!   begun (see [`Client`]), so the call does not fail. A PUT so caught fails with
//!   `ConnectionLost`, as the server may have written it. The settle stays: it spares the common
//!   case the failed send and the second connection's round trips.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::time::{Duration, Instant};

use featureproxy_client::{Client, ClientOptions, Error, HelloReply, TlsOptions};

/// The longest stretch a blocked call goes without running its hook (signals) and checking for
/// `close()`.
pub const SLICE: Duration = Duration::from_millis(50);
/// A call that starts after the client has been idle this long lets the runtime read the
/// connections first (see the module docs and [`Core::call`]).
pub const IDLE: Duration = Duration::from_millis(1);
/// The Rust client's own timeout: none ([`Duration::MAX`] arms no timer in the Rust client);
/// [`Core::call`] bounds calls, so one timer per call is enough.
pub const NO_TIMEOUT: Duration = Duration::MAX;
/// Stands in for "never" where a wait has no end ([`bounded`] with a wait too long for the clock).
const FOREVER: Duration = Duration::from_secs(10 * 365 * 86_400);

static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
static WATCH_FORKS: Once = Once::new();

extern "C" fn after_fork_in_child() {
    // Async-signal-safe: one atomic add.
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Installs the `pthread_atfork` child handler that marks every [`Live`] made before a fork as
/// the parent's (once per process; later calls do nothing).
pub fn watch_forks() {
    WATCH_FORKS.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic; no other state is touched.
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });
}

/// How many times this process's line of ancestors has forked since [`watch_forks`]: a [`Live`]
/// made at another generation belongs to another process.
pub fn fork_generation() -> u64 {
    FORK_GENERATION.load(Ordering::Relaxed)
}

/// What the Python constructor was given.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to connect, as the Rust client takes it (`host:port`, `[v6]:port`).
    pub connect_to: String,
    pub token: Option<String>,
    pub client_name: String,
    /// Bounds connecting and each wait for a reply.
    pub timeout: Duration,
    pub pool_size: usize,
    pub retry_overloaded: bool,
    pub overload_backoff: Duration,
    /// TLS, its files already read ([`crate::tls::TlsSettings::options`]); `None`: plaintext.
    pub tls: Option<TlsOptions>,
}

impl Options {
    fn client_options(&self) -> ClientOptions {
        ClientOptions {
            token: self.token.clone(),
            client_name: self.client_name.clone(),
            timeout: NO_TIMEOUT,
            pool_size: self.pool_size.max(1),
            retry_overloaded: self.retry_overloaded,
            overload_backoff: self.overload_backoff,
            tls: self.tls.clone(),
        }
    }
}

/// How a blocking call ended.
#[derive(Debug)]
pub enum Outcome<T, I> {
    /// The Rust client's answer.
    Done(Result<T, Error>),
    /// No answer within the wait; the request was abandoned (a late reply is dropped).
    TimedOut,
    /// The client was closed while the call waited.
    Closed,
    /// The hook asked to stop (a signal handler raised), with what it returned.
    Interrupted(I),
}

impl<T, I> Outcome<T, I> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U, I> {
        match self {
            Outcome::Done(r) => Outcome::Done(r.map(f)),
            Outcome::TimedOut => Outcome::TimedOut,
            Outcome::Closed => Outcome::Closed,
            Outcome::Interrupted(i) => Outcome::Interrupted(i),
        }
    }
}

/// A connected client: the Rust client and the runtime that runs it, made in one process.
pub struct Live {
    // Dropped first: its connections close, then the runtime drops their tasks.
    client: Client,
    hello: HelloReply,
    rt: tokio::runtime::Runtime,
    generation: u64,
}

impl Live {
    /// Makes the runtime and connects (every pooled connection says HELLO), within `timeout`.
    /// Blocks the calling thread.
    pub fn open<I>(
        opts: &Options,
        closed: &AtomicBool,
        hook: impl FnMut() -> Result<(), I>,
    ) -> Outcome<Live, I> {
        let generation = fork_generation();
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                return Outcome::Done(Err(Error::Connect {
                    addr: opts.connect_to.clone(),
                    source: e,
                }))
            }
        };
        let copts = opts.client_options();
        let addr = opts.connect_to.clone();
        let connected = rt.block_on(bounded(
            async move {
                let client = Client::connect(addr, copts).await?;
                let hello = client.hello_info().await?;
                Ok((client, hello))
            },
            opts.timeout,
            closed,
            hook,
        ));
        connected.map(|(client, hello)| Live {
            client,
            hello,
            rt,
            generation,
        })
    }

    /// The Rust client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The HELLO reply of the first connection: the server's name and limits.
    pub fn hello(&self) -> &HelloReply {
        &self.hello
    }

    /// True when this process made it (no fork since).
    pub fn is_ours(&self) -> bool {
        self.generation == fork_generation()
    }
}

/// Lets go of a [`Live`]: drops it in the process that made it, leaks it in a forked child.
fn release(live: Arc<Live>) {
    if live.is_ours() {
        drop(live);
    } else {
        std::mem::forget(live);
    }
}

/// Runs `fut` to completion, within `wait`, checking `closed` and running `hook` between slices.
async fn bounded<T, I>(
    fut: impl Future<Output = Result<T, Error>>,
    wait: Duration,
    closed: &AtomicBool,
    mut hook: impl FnMut() -> Result<(), I>,
) -> Outcome<T, I> {
    let start = tokio::time::Instant::now();
    let end = start.checked_add(wait).unwrap_or(start + FOREVER);
    let mut fut = pin!(fut);
    let mut slice_end = start + SLICE;
    loop {
        match tokio::time::timeout_at(slice_end.min(end), &mut fut).await {
            Ok(r) => return Outcome::Done(r),
            Err(_) => {
                if closed.load(Ordering::Acquire) {
                    return Outcome::Closed;
                }
                if let Err(i) = hook() {
                    return Outcome::Interrupted(i);
                }
                let now = tokio::time::Instant::now();
                if now >= end {
                    return Outcome::TimedOut;
                }
                slice_end = now + SLICE;
            }
        }
    }
}

/// The client was closed ([`Core::close`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// The state of one Python client. Methods that lock (`current`, `install`, `close`) are for
/// callers that hold the GIL, so that no thread holds the lock across a fork; [`Core::call`] and
/// [`Live::open`] block and are for callers that released it.
pub struct Core {
    opts: Options,
    live: Mutex<Option<Arc<Live>>>,
    closed: AtomicBool,
    inflight: AtomicUsize,
    /// The last call failed on its connection (or timed out): the next one settles first.
    unsettled: AtomicBool,
    /// When the last call ended, in µs since `epoch`.
    last_end_us: AtomicU64,
    epoch: Instant,
    /// The server's limits and name, from the latest HELLO.
    max_frame: AtomicU32,
    max_batch: AtomicU32,
    server: Mutex<String>,
    /// Overload retries counted by clients this one replaced after a fork.
    retries_before: AtomicU64,
    refused_before: AtomicU64,
}

impl Core {
    pub fn new(opts: Options) -> Core {
        watch_forks();
        Core {
            opts,
            live: Mutex::new(None),
            closed: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            unsettled: AtomicBool::new(false),
            last_end_us: AtomicU64::new(0),
            epoch: Instant::now(),
            max_frame: AtomicU32::new(featureproxy_protocol::DEFAULT_MAX_FRAME),
            max_batch: AtomicU32::new(featureproxy_protocol::DEFAULT_MAX_BATCH),
            server: Mutex::new(String::new()),
            retries_before: AtomicU64::new(0),
            refused_before: AtomicU64::new(0),
        }
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    fn slot(&self) -> MutexGuard<'_, Option<Arc<Live>>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connected client, if there is one made in this process; [`Closed`] once closed.
    /// A client inherited through fork is leaked here (see the module docs), so the caller
    /// connects anew.
    pub fn current(&self) -> Result<Option<Arc<Live>>, Closed> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Closed);
        }
        let mut slot = self.slot();
        match slot.as_ref() {
            Some(live) if live.is_ours() => Ok(Some(live.clone())),
            Some(_) => {
                let stale = slot.take().expect("checked above");
                drop(slot);
                self.retries_before
                    .fetch_add(stale.client.overload_retries(), Ordering::Relaxed);
                self.refused_before
                    .fetch_add(stale.client.overload_retries_refused(), Ordering::Relaxed);
                // The parent's callers never return here.
                self.inflight.store(0, Ordering::Relaxed);
                std::mem::forget(stale);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Makes `live` the connected client, unless another caller installed one first (then that
    /// one is returned and `live` dropped); [`Closed`] if the client was closed meanwhile.
    pub fn install(&self, live: Live) -> Result<Arc<Live>, Closed> {
        let mut slot = self.slot();
        if self.closed.load(Ordering::Acquire) {
            return Err(Closed);
        }
        if let Some(cur) = slot.as_ref().filter(|l| l.is_ours()) {
            return Ok(cur.clone());
        }
        self.max_frame
            .store(live.hello.max_frame, Ordering::Relaxed);
        self.max_batch
            .store(live.hello.max_batch, Ordering::Relaxed);
        *self.server.lock().unwrap_or_else(PoisonError::into_inner) = live.hello.server.clone();
        let live = Arc::new(live);
        if let Some(old) = slot.replace(live.clone()) {
            release(old);
        }
        Ok(live)
    }

    /// Connects (blocking): [`Live::open`] with this client's options.
    pub fn open<I>(&self, hook: impl FnMut() -> Result<(), I>) -> Outcome<Live, I> {
        Live::open(&self.opts, &self.closed, hook)
    }

    /// Runs one call of the Rust client on `live`'s runtime, on this thread, within `wait`.
    pub fn call<'a, T, F, I>(
        &self,
        live: &'a Live,
        wait: Duration,
        make: impl FnOnce(&'a Client) -> F,
        hook: impl FnMut() -> Result<(), I>,
    ) -> Outcome<T, I>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let alone = self.inflight.fetch_add(1, Ordering::AcqRel) == 0;
        // After an idle spell, or after a call that failed on its connection, let the runtime
        // read the connections before this call picks one (see the module docs): two turns of
        // the scheduler, the first polling the sockets and queueing the tasks they woke, the
        // second running them (a reader finding EOF closes its connection, which the call then
        // replaces). Tasks woken with the previous call's own reply are run there too. Busy
        // callers skip it: their calls drive the runtime all the time.
        let settle =
            alone && (self.since_last_end() >= IDLE || self.unsettled.load(Ordering::Relaxed));
        // Pinned here, and only a reference handed to `block_on`: `block_on` moves the future it
        // is given (twice), and a call's future is kilobytes (callgrind showed that copy as half
        // of a GET's user-space instructions when the future itself was handed over).
        let fut = pin!(make(&live.client));
        let out = live.rt.block_on(async {
            if settle {
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
            }
            bounded(fut, wait, &self.closed, hook).await
        });
        let failed = match &out {
            Outcome::Done(Err(e)) => e.code().is_none(),
            Outcome::Done(Ok(_)) => false,
            _ => true,
        };
        if failed {
            self.unsettled.store(true, Ordering::Relaxed);
        } else if settle {
            self.unsettled.store(false, Ordering::Relaxed);
        }
        self.last_end_us
            .store(self.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
        // Saturating: a fork may have reset the count under a call of the child's.
        let _ = self
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
        out
    }

    fn since_last_end(&self) -> Duration {
        let now = self.epoch.elapsed().as_micros() as u64;
        Duration::from_micros(now.saturating_sub(self.last_end_us.load(Ordering::Relaxed)))
    }

    /// Calls in progress (waiting for a reply), over all threads.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Closes the client: later calls fail, waiting ones end within a [`SLICE`], and the
    /// connections close as soon as no call uses them.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let old = self.slot().take();
        if let Some(old) = old {
            release(old);
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn max_frame(&self) -> u32 {
        self.max_frame.load(Ordering::Relaxed)
    }

    pub fn max_batch(&self) -> u32 {
        self.max_batch.load(Ordering::Relaxed)
    }

    pub fn server(&self) -> String {
        self.server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// GETs retried after OVERLOADED, including those of clients replaced after a fork.
    pub fn overload_retries(&self, live: Option<&Live>) -> u64 {
        self.retries_before.load(Ordering::Relaxed)
            + live.map_or(0, |l| l.client.overload_retries())
    }

    /// Shed GETs the retry budget refused, as [`Core::overload_retries`].
    pub fn overload_retries_refused(&self, live: Option<&Live>) -> u64 {
        self.refused_before.load(Ordering::Relaxed)
            + live.map_or(0, |l| l.client.overload_retries_refused())
    }

    /// The connected client without the fork check, for counters.
    pub fn peek(&self) -> Option<Arc<Live>> {
        self.slot().as_ref().filter(|l| l.is_ours()).cloned()
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        if let Some(live) = self.slot().take() {
            release(live);
        }
    }
}
