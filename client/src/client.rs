//! The client: a pool of multiplexed connections, a schema cache and the typed calls.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use featureproxy_protocol::{
    get_response_len, ErrorCode, Frame, HelloReply, Limits, PutEntry, PutRequest, Request,
    Response, GET_FLAG_BYPASS_CACHE, HEADER_LEN, MAX_KEY_LEN,
};

use crate::batch::unexpected;
use crate::conn::{CallError, Conn};
use crate::overload::{self, OverloadRetry};
use crate::{Batch, Error, Schema, TlsConnector, TlsOptions, Value};

/// How a [`Client`] connects and how long it waits.
#[derive(Clone)]
pub struct ClientOptions {
    /// Sent in HELLO; required when the server is configured with a token.
    pub token: Option<String>,
    /// Sent in HELLO so the server's logs and metrics can tell clients apart.
    pub client_name: String,
    /// Upper bound on each call (`get`, `put`, `schema`, `ping`, ...), everything included:
    /// reconnecting, fetching a schema, the request itself, a schema-mismatch retry and an
    /// overload retry. [`Duration::MAX`] (or any timeout too large to add to the clock) means
    /// none: no timer is armed, for callers that bound their calls themselves (such as the
    /// Python client's native core, which bounds each call by its own rules and would otherwise
    /// pay for two timers per call).
    ///
    /// Default 2 s, to leave room for the proxy's own answer to a PUT: the proxy waits up to its
    /// `write_timeout` (1 s by default) for Redis to acknowledge a write, and then answers
    /// `TIMEOUT`, or `BACKEND_UNAVAILABLE` saying the write may be partial; a client that gave up
    /// at 1 s would miss that answer by a hair and could not tell what happened. Raise it with
    /// the proxy's `write_timeout`. A GET is answered by its server-side deadline
    /// ([`GetOptions::deadline`], else the server's default of 50 ms) long before: keep that
    /// deadline below this timeout, so the server answers with defaults before the client gives
    /// up; this timeout only bounds a GET when the proxy cannot answer at all.
    pub timeout: Duration,
    /// Connections kept open. Each carries many requests at once, so a few are plenty; more
    /// spread the load over more of the server's shards (cores). Default 2; 0 counts as 1.
    pub pool_size: usize,
    /// Retry a GET the server shed (answered `OVERLOADED`, unserved) once, on the next pooled
    /// connection, after a pause of up to [`ClientOptions::overload_backoff`]. Only when the
    /// pause ends within the call's [`ClientOptions::timeout`] and the client's retry budget has
    /// a token (retries are at most 10% of the GETs sent over the last second, plus 10; see
    /// [`crate::RETRY_BUDGET_WINDOW`]); otherwise the GET returns `OVERLOADED` at once.
    /// [`Client::overload_retries`] and [`Client::overload_retries_refused`] count what happened.
    /// PUTs are never retried: the server does not shed them, and a write sent again after
    /// others wrote the same keys would overwrite newer rows (the last PUT wins), so that is the
    /// caller's decision. Default true.
    pub retry_overloaded: bool,
    /// The longest pause before an overload retry; each pause is drawn at random between half of
    /// it and all of it, so callers shed together do not come back together. Default 20 ms:
    /// twice the proxy's default `shed_queue_delay` (10 ms), the queue it sheds beyond, so the
    /// queue has drained when the retry arrives; small next to a GET's 50 ms default deadline.
    pub overload_backoff: Duration,
    /// Connect over TLS with these settings (the proxy's `[server.tls] listen` port); `None`
    /// (the default) connects in plaintext. Certificate files are read once, by
    /// [`Client::connect`], which fails with [`Error::Tls`] naming a file it cannot use. The
    /// token ([`ClientOptions::token`]) goes in HELLO as before, inside the encrypted stream.
    pub tls: Option<TlsOptions>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            token: None,
            client_name: concat!("featureproxy-client/", env!("CARGO_PKG_VERSION")).to_string(),
            timeout: Duration::from_secs(2),
            pool_size: 2,
            retry_overloaded: true,
            overload_backoff: Duration::from_millis(20),
            tls: None,
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token.
        f.debug_struct("ClientOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("client_name", &self.client_name)
            .field("timeout", &self.timeout)
            .field("pool_size", &self.pool_size)
            .field("retry_overloaded", &self.retry_overloaded)
            .field("overload_backoff", &self.overload_backoff)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Per-GET options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// Read from Redis even when the proxy's hot cache holds the entity (for callers that must
    /// see a write they just made).
    pub bypass_cache: bool,
    /// How long the server may spend before answering with defaults (status `Degraded`) for the
    /// entities it could not read in time. `None` uses the server's default. Sent in
    /// microseconds, clamped to 1 µs ..= `u32::MAX` µs.
    pub deadline: Option<Duration>,
}

/// A point in time as Unix milliseconds: what a PUT row's `computed_at` is. Implemented for
/// `u64` (already milliseconds), [`SystemTime`] and [`Duration`] (since the Unix epoch).
pub trait UnixMillis {
    /// Milliseconds since the Unix epoch (0 for times before it, `u64::MAX` past the far end).
    fn unix_millis(&self) -> u64;
}

impl UnixMillis for u64 {
    fn unix_millis(&self) -> u64 {
        *self
    }
}

impl UnixMillis for Duration {
    fn unix_millis(&self) -> u64 {
        u64::try_from(self.as_millis()).unwrap_or(u64::MAX)
    }
}

impl UnixMillis for SystemTime {
    fn unix_millis(&self) -> u64 {
        self.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.unix_millis())
    }
}

impl<T: UnixMillis + ?Sized> UnixMillis for &T {
    fn unix_millis(&self) -> u64 {
        (**self).unix_millis()
    }
}

/// A featureproxy client: a small pool of connections, each carrying many requests at once.
///
/// Cheap to clone (clones share the pool and the schema cache), and safe to use from many tasks
/// at once, on a current-thread or multi-thread tokio runtime. Calls are spread over the pooled
/// connections round-robin. A connection that breaks fails the calls in flight on it with
/// [`Error::ConnectionClosed`] and is reopened (with a new HELLO) by the next call that lands on
/// it. Two kinds of call are sent once more instead, on the reopened connection and within the
/// call's timeout (once per call in all): one whose request provably never left, and a read-only
/// one (GET, PING, SCHEMA) whose connection the server closed (EOF or a reset) before any byte
/// of a reply arrived after the request was written: the race of a request sent just as the
/// server closed an idle connection, which HTTP clients settle the same way. A PUT in that case
/// is not sent again (the server may have written it before closing): it fails with
/// [`Error::ConnectionClosed`]. Connections close when the last clone of the client is dropped.
///
/// A GET the server sheds (`OVERLOADED`) is retried once, within the call's timeout and a retry
/// budget ([`ClientOptions::retry_overloaded`]); [`Client::overload_retries`] counts the retries.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    addr: Arc<str>,
    opts: ClientOptions,
    /// `opts.tls` with its files read, for every connection of the pool.
    tls: Option<TlsConnector>,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    schemas: Mutex<HashMap<String, Arc<Schema>>>,
    overload: OverloadRetry,
}

/// One pooled connection and the lock that makes one caller at a time reopen it.
struct Slot {
    current: Mutex<Option<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    fn live(&self) -> Option<Arc<Conn>> {
        let cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        cur.as_ref().filter(|c| c.is_open()).cloned()
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.addr)
            .field("options", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the proxy at `addr` (`"host:port"` or a [`std::net::SocketAddr`]), opening
    /// `pool_size` connections, each introduced with HELLO.
    ///
    /// Fails if any connection cannot be opened: [`Error::Connect`] (naming the address and the
    /// OS error), [`Error::Timeout`], or [`Error::Server`] when HELLO is refused (e.g.
    /// `UNAUTHORIZED` for a wrong token, `UNSUPPORTED_VERSION`). With [`ClientOptions::tls`],
    /// [`Error::Tls`] for certificate files it cannot use, a failed handshake, or a client
    /// certificate the proxy refuses (or requires and did not get).
    pub async fn connect(addr: impl ToString, opts: ClientOptions) -> Result<Client, Error> {
        let addr = addr.to_string();
        let tls = opts.tls.as_ref().map(|t| t.connector(&addr)).transpose()?;
        let pool = opts.pool_size.max(1);
        let slots = (0..pool)
            .map(|_| Slot {
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            })
            .collect();
        let client = Client {
            inner: Arc::new(Inner {
                addr: Arc::from(addr),
                opts,
                tls,
                slots,
                next: AtomicUsize::new(0),
                schemas: Mutex::new(HashMap::new()),
                overload: OverloadRetry::new(),
            }),
        };
        for i in 0..pool {
            client.timed(client.conn(i)).await?;
        }
        Ok(client)
    }

    /// The address the client connects to.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The options the client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// The number of pooled connections.
    pub fn pool_size(&self) -> usize {
        self.inner.slots.len()
    }

    /// GETs sent again after the server shed them (`OVERLOADED`), since the client was made
    /// (shared by its clones). See [`ClientOptions::retry_overloaded`].
    pub fn overload_retries(&self) -> u64 {
        self.inner.overload.retries()
    }

    /// Shed GETs not retried because the retry budget had no token left: they returned
    /// `OVERLOADED` to their callers. (A shed GET whose retry would not fit in its timeout is
    /// counted in neither.)
    pub fn overload_retries_refused(&self) -> u64 {
        self.inner.overload.refused()
    }

    /// Round trip to the server; returns how long it took.
    pub async fn ping(&self) -> Result<Duration, Error> {
        self.timed(async {
            let start = Instant::now();
            self.request(
                self.pick(),
                true,
                |_| Ok(()),
                |out, id| Request::Ping.encode(out, id),
                |frame, limits| match Response::decode(&frame, limits)? {
                    Response::Pong => Ok(start.elapsed()),
                    Response::Error(e) => Err(Error::from_server(e)),
                    other => Err(unexpected("PING", &other)),
                },
            )
            .await
        })
        .await
    }

    /// The HELLO reply of the next pooled connection (round-robin): the server's version, the
    /// shard (core) serving that connection, and its `max_frame` and `max_batch` limits.
    pub async fn hello_info(&self) -> Result<HelloReply, Error> {
        self.timed(async {
            let conn = self.conn(self.pick()).await?;
            Ok(conn.hello().clone())
        })
        .await
    }

    /// The schema of `view`: from the client's cache, or fetched with SCHEMA and cached.
    ///
    /// The cache is dropped for a view when the server answers `SCHEMA_MISMATCH` or
    /// `UNKNOWN_VIEW`, so a redefined view is picked up by itself.
    pub async fn schema(&self, view: &str) -> Result<Arc<Schema>, Error> {
        self.timed(self.schema_on(self.pick(), view)).await
    }

    /// The cached schema of `view`, if any, without asking the server.
    pub fn cached_schema(&self, view: &str) -> Option<Arc<Schema>> {
        self.schemas().get(view).cloned()
    }

    /// Drops the cached schema of `view`; the next call that needs it fetches it again.
    pub fn forget_schema(&self, view: &str) {
        self.schemas().remove(view);
    }

    /// Reads the features of `keys` from `view`: one row per key, in order (see [`Batch`]).
    ///
    /// Keys are 1 to [`MAX_KEY_LEN`] bytes. The batch is checked against the server's
    /// `max_batch` and `max_frame` before anything is sent. If the view changed since its schema
    /// was cached, the schema is fetched again and the GET retried once. If the server sheds the
    /// GET (`OVERLOADED`), it is sent once more after a short pause, within the timeout and the
    /// retry budget ([`ClientOptions::retry_overloaded`]).
    pub async fn get<K: AsRef<[u8]>>(&self, view: &str, keys: &[K]) -> Result<Batch, Error> {
        self.get_with(view, keys, GetOptions::default()).await
    }

    /// [`Client::get`] with options: bypass the proxy's hot cache, or set the server's deadline.
    pub async fn get_with<K: AsRef<[u8]>>(
        &self,
        view: &str,
        keys: &[K],
        opts: GetOptions,
    ) -> Result<Batch, Error> {
        let deadline = self.deadline();
        self.timed_until(deadline, async {
            check_keys(keys.iter().map(|k| k.as_ref().len()))?;
            let retry = self.inner.opts.retry_overloaded;
            if retry {
                self.inner
                    .overload
                    .sent(tokio::time::Instant::now().into_std());
            }
            match self.get_on(self.pick(), view, keys, opts).await {
                Err(e) if retry && e.code() == Some(ErrorCode::Overloaded) => {
                    let now = tokio::time::Instant::now().into_std();
                    // No deadline: any pause fits (30 years stand in for forever, as before).
                    let until = deadline.map_or_else(
                        || now + Duration::from_secs(86_400 * 365 * 30),
                        |d| d.into_std(),
                    );
                    let pause = self.inner.overload.pause(
                        self.inner.opts.overload_backoff,
                        overload::jitter(),
                        now,
                        until,
                    );
                    let Some(pause) = pause else {
                        return Err(e);
                    };
                    // Boxed, as the rare steps are (see `conn`): the GET's future stays small.
                    Box::pin(async {
                        tokio::time::sleep(pause).await;
                        // On the next pooled connection: perhaps another shard, and not the
                        // connection that was behind.
                        self.get_on(self.pick(), view, keys, opts).await
                    })
                    .await
                }
                result => result,
            }
        })
        .await
    }

    /// One GET on pooled connection `slot`, with the schema-mismatch retry.
    async fn get_on<K: AsRef<[u8]>>(
        &self,
        slot: usize,
        view: &str,
        keys: &[K],
        opts: GetOptions,
    ) -> Result<Batch, Error> {
        let mut schema = self.schema_on(slot, view).await?;
        let mut retried = false;
        loop {
            match self.get_once(slot, &schema, keys, opts).await {
                Err(e) if is_schema_mismatch(&e) && !retried => {
                    retried = true;
                    self.forget_if(view, schema.schema_id());
                    schema = Box::pin(self.fetch_schema(slot, view)).await?;
                }
                Err(e) => {
                    if is_schema_mismatch(&e) || e.code() == Some(ErrorCode::UnknownView) {
                        self.forget_if(view, schema.schema_id());
                    }
                    return Err(e);
                }
                ok => return ok,
            }
        }
    }

    /// Writes rows to `view`; returns how many the server wrote.
    ///
    /// Each row is `(key, computed_at, values)`: the entity key (1 to [`MAX_KEY_LEN`] bytes),
    /// when the features were computed (Unix ms as `u64`, or a [`SystemTime`]; ages are measured
    /// from it) and one [`Value`] per feature in schema order, each of its feature's exact dtype.
    /// Rows are encoded against the cached schema; if the server says the view changed, the schema
    /// is fetched again and the rows re-encoded and sent once more, so values that no longer fit
    /// fail with [`Error::BadRow`] rather than being written wrongly.
    ///
    /// ```no_run
    /// # async fn f(client: featureproxy_client::Client) -> Result<(), featureproxy_client::Error> {
    /// use featureproxy_client::Value;
    /// let now = std::time::SystemTime::now();
    /// client
    ///     .put("user", &[("u1", now, [Value::F32(0.5), Value::I64(3)])])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn put<K, T, V>(&self, view: &str, rows: &[(K, T, V)]) -> Result<u32, Error>
    where
        K: AsRef<[u8]>,
        T: UnixMillis,
        V: AsRef<[Value]>,
    {
        self.timed(async {
            check_keys(rows.iter().map(|(k, _, _)| k.as_ref().len()))?;
            let slot = self.pick();
            let mut schema = self.schema_on(slot, view).await?;
            let mut retried = false;
            loop {
                let entries = rows
                    .iter()
                    .enumerate()
                    .map(|(i, (key, at, values))| {
                        let key = key.as_ref();
                        let row = schema.encode_row(values.as_ref()).map_err(|e| match e {
                            Error::BadRow(m) => Error::BadRow(format!(
                                "row {i} (key {:?}): {m}",
                                String::from_utf8_lossy(key)
                            )),
                            other => other,
                        })?;
                        Ok(PutEntry {
                            key: Bytes::copy_from_slice(key),
                            computed_at_ms: at.unix_millis(),
                            row,
                        })
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                match self.put_once(slot, &schema, &entries).await {
                    Err(e) if is_schema_mismatch(&e) && !retried => {
                        retried = true;
                        self.forget_if(view, schema.schema_id());
                        schema = self.fetch_schema(slot, view).await?;
                    }
                    Err(e) => {
                        if is_schema_mismatch(&e) || e.code() == Some(ErrorCode::UnknownView) {
                            self.forget_if(view, schema.schema_id());
                        }
                        return Err(e);
                    }
                    ok => return ok,
                }
            }
        })
        .await
    }

    /// Writes already-encoded rows to `view` (each `row` must be the view's `row_bytes` long,
    /// e.g. from [`Schema::encode_row`]); returns how many the server wrote.
    ///
    /// Unlike [`Client::put`] there is no retry on `SCHEMA_MISMATCH`: rows encoded for the old
    /// schema cannot be re-encoded here. The cached schema is dropped and the error returned, so
    /// the caller can fetch the new schema ([`Client::schema`]) and encode again.
    pub async fn put_raw(&self, view: &str, entries: &[PutEntry]) -> Result<u32, Error> {
        self.timed(async {
            check_keys(entries.iter().map(|e| e.key.len()))?;
            let slot = self.pick();
            let schema = self.schema_on(slot, view).await?;
            if let Some((i, e)) = entries
                .iter()
                .enumerate()
                .find(|(_, e)| e.row.len() != schema.row_bytes())
            {
                return Err(Error::BadRow(format!(
                    "row {i} (key {:?}) is {} bytes, but rows of view {view} are {} bytes",
                    String::from_utf8_lossy(&e.key),
                    e.row.len(),
                    schema.row_bytes()
                )));
            }
            let r = self.put_once(slot, &schema, entries).await;
            if let Err(e) = &r {
                if is_schema_mismatch(e) || e.code() == Some(ErrorCode::UnknownView) {
                    self.forget_if(view, schema.schema_id());
                }
            }
            r
        })
        .await
    }

    // ---- internals ----

    async fn timed<T>(&self, fut: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        self.timed_until(self.deadline(), fut).await
    }

    /// When a call starting now must be over: now plus the timeout; `None` for a timeout too
    /// large to add to the clock, which means none ([`ClientOptions::timeout`]). On tokio's
    /// clock, which tests may pause.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        tokio::time::Instant::now().checked_add(self.inner.opts.timeout)
    }

    /// Runs `fut` until `deadline` (the call's start plus the timeout), else fails with
    /// [`Error::Timeout`]; with no deadline, runs it with no timer at all.
    async fn timed_until<T>(
        &self,
        deadline: Option<tokio::time::Instant>,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let Some(deadline) = deadline else {
            return fut.await;
        };
        match tokio::time::timeout_at(deadline, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                addr: self.inner.addr.to_string(),
                after: self.inner.opts.timeout,
            }),
        }
    }

    fn schemas(&self) -> MutexGuard<'_, HashMap<String, Arc<Schema>>> {
        self.inner
            .schemas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the cached schema of `view` if it is still the one with `schema_id` (another call
    /// may already have cached a newer one).
    fn forget_if(&self, view: &str, schema_id: u32) {
        let mut cache = self.schemas();
        if cache.get(view).is_some_and(|s| s.schema_id() == schema_id) {
            cache.remove(view);
        }
    }

    fn pick(&self) -> usize {
        self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len()
    }

    /// The live connection of slot `i`, reopened if it broke.
    async fn conn(&self, i: usize) -> Result<Arc<Conn>, Error> {
        let slot = &self.inner.slots[i % self.inner.slots.len()];
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        // One caller reconnects; the others wait for it rather than opening connections of their
        // own.
        let _reconnecting = slot.connecting.lock().await;
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        let opts = &self.inner.opts;
        // Boxed: opening a connection (TCP, TLS, HELLO) is a rare step with a large future
        // (about 5 KB). Inline, it made every call's future that large, and a blocking caller
        // (the native Python core's `block_on`) moved it twice per call: half the native core's
        // user-space instructions per GET were that copy (callgrind).
        let conn = Arc::new(
            Box::pin(Conn::open(
                &self.inner.addr,
                opts.token.as_deref().unwrap_or(""),
                &opts.client_name,
                self.inner.tls.as_ref(),
            ))
            .await?,
        );
        *slot.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    /// Sends one request on slot `slot` and decodes its reply with `decode`. `check` vets the
    /// request against the connection's limits before it is sent.
    ///
    /// Sent once more on a reopened connection (one resend in all): a request that provably never
    /// left (the connection broke first), and, when `idempotent` (it only reads: sending it twice
    /// does no harm), one whose connection the server closed before any reply to it began
    /// ([`CallError::Unanswered`]). Any other request that may have reached the server is not
    /// sent again. A reply that does not decode closes the connection (protocol spec 6.4: the
    /// stream can no longer be trusted), so the next call starts afresh.
    async fn request<T>(
        &self,
        slot: usize,
        idempotent: bool,
        check: impl Fn(&Limits) -> Result<(), Error>,
        encode: impl Fn(&mut BytesMut, u32),
        decode: impl FnOnce(Frame, &Limits) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut attempt = 0;
        let (frame, conn) = loop {
            attempt += 1;
            let conn = self.conn(slot).await?;
            check(conn.limits())?;
            match conn.call(&encode).await {
                Ok(frame) => break (frame, conn),
                Err(CallError::NotSent) if attempt < 2 => continue,
                Err(CallError::Unanswered(_)) if idempotent && attempt < 2 => continue,
                Err(CallError::NotSent) => {
                    return Err(Error::ConnectionClosed {
                        addr: self.inner.addr.to_string(),
                        reason: "the connection broke before the request could be sent".into(),
                    })
                }
                Err(CallError::Unanswered(e) | CallError::Failed(e)) => return Err(e),
            }
        };
        let result = decode(frame, conn.limits());
        if let Err(Error::Protocol(e)) = &result {
            // A reply for another schema version is well formed (the caller refetches the
            // schema); anything else undecodable means the stream is not to be trusted.
            if e.code != ErrorCode::SchemaMismatch {
                conn.close(&format!("undecodable reply: {e}"));
            }
        }
        result
    }

    async fn schema_on(&self, slot: usize, view: &str) -> Result<Arc<Schema>, Error> {
        if let Some(s) = self.cached_schema(view) {
            return Ok(s);
        }
        // Boxed, as the rare steps are (see `conn`): the GET's future stays small.
        Box::pin(self.fetch_schema(slot, view)).await
    }

    async fn fetch_schema(&self, slot: usize, view: &str) -> Result<Arc<Schema>, Error> {
        let req = Request::Schema {
            view: view.to_string(),
        };
        let reply = self
            .request(
                slot,
                true,
                |_| Ok(()),
                |out, id| req.encode(out, id),
                |frame, limits| match Response::decode(&frame, limits)? {
                    Response::Schema(s) => Ok(s),
                    Response::Error(e) => Err(Error::from_server(e)),
                    other => Err(unexpected("SCHEMA", &other)),
                },
            )
            .await?;
        let schema = Arc::new(Schema::new(view, reply)?);
        self.schemas().insert(view.to_string(), schema.clone());
        Ok(schema)
    }

    async fn get_once<K: AsRef<[u8]>>(
        &self,
        slot: usize,
        schema: &Arc<Schema>,
        keys: &[K],
        opts: GetOptions,
    ) -> Result<Batch, Error> {
        let n = keys.len();
        // `len` fields: everything after the 4-byte length.
        let req_len =
            HEADER_LEN - 4 + 16 + keys.iter().map(|k| 2 + k.as_ref().len()).sum::<usize>();
        let reply_len = get_response_len(n, schema.row_bytes()).saturating_sub(4);
        let check = |l: &Limits| {
            check_batch(n, l)?;
            check_frame("request", req_len, l)?;
            check_frame("reply", reply_len, l)
        };
        let flags = if opts.bypass_cache {
            GET_FLAG_BYPASS_CACHE
        } else {
            0
        };
        let deadline_us = opts.deadline.map_or(0, |d| {
            u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1)
        });
        let (view_id, schema_id) = (schema.view_id(), schema.schema_id());
        self.request(
            slot,
            true,
            check,
            |out, id| Request::encode_get(out, id, view_id, flags, schema_id, deadline_us, keys),
            |frame, limits| Batch::from_frame(schema.clone(), frame, n, limits),
        )
        .await
    }

    async fn put_once(
        &self,
        slot: usize,
        schema: &Schema,
        entries: &[PutEntry],
    ) -> Result<u32, Error> {
        let n = entries.len();
        let req_len = HEADER_LEN - 4
            + 12
            + entries
                .iter()
                .map(|e| 2 + e.key.len() + 8 + e.row.len())
                .sum::<usize>();
        let check = |l: &Limits| {
            check_batch(n, l)?;
            check_frame("request", req_len, l)
        };
        let req = Request::Put(PutRequest::new(
            schema.view_id(),
            schema.schema_id(),
            entries,
        ));
        // Not idempotent: a PUT the server may have written is not sent again.
        self.request(
            slot,
            false,
            check,
            |out, id| req.encode(out, id),
            |frame, limits| match Response::decode(&frame, limits)? {
                Response::Put { written } => Ok(written),
                Response::Error(e) => Err(Error::from_server(e)),
                other => Err(unexpected("PUT", &other)),
            },
        )
        .await
    }

    /// The live connection of every slot, for tests.
    #[cfg(test)]
    pub(crate) async fn conns(&self) -> Result<Vec<Arc<Conn>>, Error> {
        let mut out = Vec::new();
        for i in 0..self.inner.slots.len() {
            out.push(self.conn(i).await?);
        }
        Ok(out)
    }
}

fn is_schema_mismatch(e: &Error) -> bool {
    match e {
        Error::Server { code, .. } => *code == ErrorCode::SchemaMismatch,
        Error::Protocol(p) => p.code == ErrorCode::SchemaMismatch,
        _ => false,
    }
}

fn check_keys(lens: impl Iterator<Item = usize>) -> Result<(), Error> {
    for (index, len) in lens.enumerate() {
        if len == 0 || len > MAX_KEY_LEN {
            return Err(Error::BadKey { index, len });
        }
    }
    Ok(())
}

fn check_batch(n: usize, limits: &Limits) -> Result<(), Error> {
    if n > limits.max_batch as usize {
        return Err(Error::BatchTooLarge {
            n,
            max_batch: limits.max_batch,
        });
    }
    Ok(())
}

pub(crate) fn check_frame(what: &'static str, len: usize, limits: &Limits) -> Result<(), Error> {
    if len > limits.max_frame as usize {
        return Err(Error::FrameTooLarge {
            what,
            len,
            max_frame: limits.max_frame,
        });
    }
    Ok(())
}
