//! The PyO3 bindings: `featureproxy_native.Core` (one per `featureproxy.Client`), `Reply` (a
//! GET's answer, exporting its rows through the buffer protocol) and the codec functions.
//!
//! Every call holds the GIL only to read its arguments and to build its result: a GET's keys are
//! checked and copied into one buffer ([`Keys`]), then one `detach` covers encoding, the round
//! trip and decoding.

use std::ffi::c_int;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use featureproxy_client::{Batch, Error, ErrorCode, GetOptions, PutEntry};
use featureproxy_protocol::{
    decode_frame as split_frame, Frame, Limits, Request, Response, MAX_KEY_LEN,
};
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyMemoryView, PyModule, PyString, PyTuple};
use pyo3::{ffi, IntoPyObjectExt};

use crate::core::{self as blocking, Live, Options, Outcome};
use crate::failure::{self, Context, Failure, Kind, TlsShown};
use crate::tls::TlsSettings;

// ---- errors

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// `featureproxy.errors`, where every exception class lives.
fn errors(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    ERRORS
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("featureproxy.errors")?.unbind())
        })
        .map(|m| m.bind(py))
}

/// The Python exception for `f` (see [`crate::failure`]).
fn raise(py: Python<'_>, f: Failure, addr: &str) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let m = errors(py)?;
        let obj = match f.kind {
            Kind::Server { code, message } => {
                m.getattr("server_error")?.call1((code, message, addr))?
            }
            Kind::Protocol { code } => m.getattr("ProtocolError")?.call1((code, f.message))?,
            Kind::Tls { reason } => m.getattr("TLSError")?.call1((f.message, reason))?,
            other => m.getattr(other.class_name())?.call1((f.message,))?,
        };
        Ok(PyErr::from_value(obj))
    };
    build().unwrap_or_else(|e| e)
}

fn invalid(py: Python<'_>, message: String) -> PyErr {
    raise(
        py,
        Failure {
            kind: Kind::InvalidRequest,
            message,
        },
        "",
    )
}

// ---- keys

/// One key, pinned: its Python object stays referenced while its bytes are read (PUT rows, and
/// keys given as another bytes-like type).
enum Key {
    Str(PyBackedStr),
    Bytes(PyBackedBytes),
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        match self {
            Key::Str(s) => s.as_bytes(),
            Key::Bytes(b) => b,
        }
    }
}

/// Python's `repr()` of a str, as messages quote arguments (`'path'`).
fn py_repr(py: Python<'_>, s: &str) -> String {
    repr(PyString::new(py, s).as_any())
}

fn repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<unprintable>".into())
}

/// A key as `featureproxy._common.key_bytes` takes it: str (UTF-8) or bytes-like, 1..=1024
/// bytes; the same messages for anything else.
fn key_of(py: Python<'_>, item: Bound<'_, PyAny>) -> PyResult<Key> {
    // The reference the caller holds is the one the key keeps (no second incref).
    let item = match item.cast_into::<PyString>() {
        Ok(s) => return checked(py, Key::Str(PyBackedStr::try_from(s)?)),
        Err(e) => e.into_inner(),
    };
    let item = match item.cast_into::<PyBytes>() {
        Ok(b) => return checked(py, Key::Bytes(PyBackedBytes::from(b))),
        Err(e) => e.into_inner(),
    };
    let key = if item.is_instance_of::<PyByteArray>() || item.is_instance_of::<PyMemoryView>() {
        let b = py
            .import("builtins")?
            .getattr("bytes")?
            .call1((&item,))?
            .cast_into::<PyBytes>()?;
        Key::Bytes(PyBackedBytes::from(b))
    } else {
        let ty = item
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        return Err(invalid(
            py,
            format!("a key must be str or bytes, not {ty}: {}", repr(&item)),
        ));
    };
    checked(py, key)
}

/// `key` if its length is 1..=1024 bytes, else InvalidRequest as the Python client words it.
fn checked(py: Python<'_>, key: Key) -> PyResult<Key> {
    check_len(py, key.as_ref())?;
    Ok(key)
}

/// Ok if `b` is 1..=1024 bytes long, else InvalidRequest as the Python client words it.
fn check_len(py: Python<'_>, b: &[u8]) -> PyResult<()> {
    if b.is_empty() || b.len() > MAX_KEY_LEN {
        let mut shown = b[..b.len().min(40)].to_vec();
        if b.len() > 40 {
            shown.extend_from_slice(b"...");
        }
        let shown = repr(PyBytes::new(py, &shown).as_any());
        return Err(invalid(
            py,
            format!(
                "key {shown} is {} bytes; keys must be 1..{MAX_KEY_LEN} bytes",
                b.len()
            ),
        ));
    }
    Ok(())
}

/// A call's keys, copied into one buffer while the GIL is held.
///
/// Copying a key's few bytes costs less than pinning its object (a reference taken, checked and
/// released again per key, through the stable ABI's calls), and the call then runs on plain
/// Rust memory with no Python object to keep alive. Plain `str` and `bytes` take the short way
/// here; anything else goes through [`key_of`], with its checks and messages.
struct Keys {
    bytes: Vec<u8>,
    /// Where each key ends in `bytes`.
    ends: Vec<usize>,
}

impl Keys {
    fn with_capacity(n: usize) -> Keys {
        Keys {
            // Room for typical keys of up to 24 bytes without a regrowth.
            bytes: Vec::with_capacity(n * 24),
            ends: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, py: Python<'_>, key: &[u8]) -> PyResult<()> {
        check_len(py, key)?;
        self.bytes.extend_from_slice(key);
        self.ends.push(self.bytes.len());
        Ok(())
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// The keys, as the Rust client takes them.
    fn slices(&self) -> Vec<&[u8]> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let key = &self.bytes[start..end];
                start = end;
                key
            })
            .collect()
    }
}

fn keys_of(py: Python<'_>, keys: &Bound<'_, PyList>) -> PyResult<Keys> {
    let mut out = Keys::with_capacity(keys.len());
    for item in keys.iter() {
        if item.is_exact_instance_of::<PyString>() {
            // SAFETY: checked just above.
            let s = unsafe { item.cast_unchecked::<PyString>() }.to_str()?;
            out.push(py, s.as_bytes())?;
        } else if item.is_exact_instance_of::<PyBytes>() {
            // SAFETY: checked just above.
            out.push(py, unsafe { item.cast_unchecked::<PyBytes>() }.as_bytes())?;
        } else {
            let key = key_of(py, item)?;
            out.push(py, key.as_ref())?;
        }
    }
    Ok(out)
}

/// A GET's `deadline` as `featureproxy._common.deadline_us` reads it: None, or a positive number
/// of seconds up to the protocol's u32 microseconds; returned in whole microseconds.
fn deadline_of(py: Python<'_>, deadline: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    let Some(d) = deadline.filter(|d| !d.is_none()) else {
        return Ok(None);
    };
    let secs = if d.is_instance_of::<pyo3::types::PyBool>() {
        None
    } else {
        d.extract::<f64>().ok().filter(|s| *s > 0.0)
    };
    let Some(secs) = secs else {
        return Err(invalid(
            py,
            format!(
                "deadline must be a positive number of seconds, not {}",
                repr(d)
            ),
        ));
    };
    let us = (secs * 1e6).ceil();
    if us > u32::MAX as f64 {
        let shown = d.str().map(|s| s.to_string()).unwrap_or_default();
        return Err(invalid(
            py,
            format!(
                "deadline {shown}s exceeds the protocol's maximum of {:.0}s",
                u32::MAX as f64 / 1e6
            ),
        ));
    }
    Ok(Some(us as u64))
}

// ---- signals

/// True on the process's main thread, the only one where Python runs signal handlers.
fn on_main_thread() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: both calls have no preconditions.
        unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t == libc::getpid() }
    }
    #[cfg(target_os = "macos")]
    {
        // SAFETY: no preconditions.
        unsafe { libc::pthread_main_np() == 1 }
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        false
    }
}

/// What a blocked call runs between two slices: on the main thread, Python's signal handlers
/// (Ctrl-C raises KeyboardInterrupt there, and the call ends with it); elsewhere nothing (no
/// handler would run, and a thread of a finalizing interpreter must not take the GIL).
///
/// Which thread it is, is asked only when a slice ends: asking costs two system calls, and most
/// calls end long before their first slice does.
fn signal_hook() -> impl FnMut() -> Result<(), PyErr> + Send {
    let mut main = None;
    move || {
        if *main.get_or_insert_with(on_main_thread) {
            Python::attach(|py| py.check_signals())
        } else {
            Ok(())
        }
    }
}

// ---- the client

/// One `featureproxy.Client`'s native state.
#[pyclass(frozen, module = "featureproxy_native")]
pub struct Core {
    core: blocking::Core,
    /// `host:port`, as messages name the proxy.
    addr: String,
    /// A TLS client's arguments; `None` for plaintext.
    tls: Option<TlsSettings>,
}

fn plural(n: usize, one: &str) -> String {
    format!("{n} {one}{}", if n == 1 { "" } else { "s" })
}

impl Core {
    fn cx<'a>(
        &'a self,
        what: &'a str,
        op_view: &'a str,
        n: usize,
        unit: &'a str,
        wait: Duration,
    ) -> Context<'a> {
        Context {
            addr: &self.addr,
            what,
            op_view,
            n,
            unit,
            wait,
            connecting: false,
            tls: self.tls.as_ref().map(|t| &t.shown),
        }
    }

    fn timeout(&self) -> Duration {
        self.core.options().timeout
    }

    /// The connected client, connecting first when there is none (after a fork, or after a
    /// failed connect).
    fn live(&self, py: Python<'_>, what: &str) -> PyResult<Arc<Live>> {
        let wait = self.timeout();
        match self.core.current() {
            Err(blocking::Closed) => Err(raise(
                py,
                failure::closed(&self.cx(what, what, 0, "", wait), false),
                &self.addr,
            )),
            Ok(Some(live)) => Ok(live),
            Ok(None) => self.connect(py),
        }
    }

    fn connect(&self, py: Python<'_>) -> PyResult<Arc<Live>> {
        let mut cx = self.cx("HELLO", "HELLO", 0, "", self.timeout());
        cx.connecting = true;
        let out = py.detach(|| self.core.open(signal_hook()));
        let live = self.finish(py, out, &cx)?;
        self.core
            .install(live)
            .map_err(|blocking::Closed| raise(py, failure::closed(&cx, true), &self.addr))
    }

    /// The value of a finished call, or its exception.
    fn finish<T>(&self, py: Python<'_>, out: Outcome<T, PyErr>, cx: &Context) -> PyResult<T> {
        match out {
            Outcome::Done(Ok(v)) => Ok(v),
            Outcome::Done(Err(e)) => Err(raise(py, failure::failure(&e, cx), &self.addr)),
            Outcome::TimedOut => Err(raise(py, failure::timed_out(cx), &self.addr)),
            Outcome::Closed => Err(raise(py, failure::closed(cx, true), &self.addr)),
            Outcome::Interrupted(e) => Err(e),
        }
    }

    fn view_repr(py: Python<'_>, view: &str) -> String {
        repr(PyString::new(py, view).as_any())
    }
}

#[pymethods]
impl Core {
    /// Connects at once (every pooled connection says HELLO), so a wrong address fails here.
    ///
    /// TLS when `tls` is true: `ca_file` (else the system's roots), `client_cert` and
    /// `client_key` (paths; the key may be in the certificate's file) and `server_hostname` (else
    /// `host`), as `featureproxy._tls.config` took them.
    #[new]
    #[pyo3(signature = (
        host, port, token, client_name, timeout, pool_size, retry_overloaded, overload_backoff,
        tls=false, ca_file=None, client_cert=None, client_key=None, server_hostname=None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        host: &str,
        port: u16,
        token: Option<String>,
        client_name: String,
        timeout: f64,
        pool_size: usize,
        retry_overloaded: bool,
        overload_backoff: f64,
        tls: bool,
        ca_file: Option<String>,
        client_cert: Option<String>,
        client_key: Option<String>,
        server_hostname: Option<String>,
    ) -> PyResult<Self> {
        let timeout = Duration::try_from_secs_f64(timeout).map_err(|_| {
            PyValueError::new_err(format!(
                "timeout must be a number of seconds >= 0, not {timeout}"
            ))
        })?;
        let overload_backoff = Duration::try_from_secs_f64(overload_backoff).map_err(|_| {
            PyValueError::new_err(format!(
                "overload_backoff must be a number of seconds >= 0, not {overload_backoff}"
            ))
        })?;
        // The Rust client parses `host:port`, which needs brackets around an IPv6 address.
        let connect_to = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let addr = format!("{host}:{port}");
        let settings = tls.then(|| {
            let shown = |v: &Option<String>| v.as_deref().map(|v| py_repr(py, v));
            let server_hostname = server_hostname.unwrap_or_else(|| host.to_string());
            TlsSettings {
                shown: TlsShown {
                    ca_file: shown(&ca_file),
                    client_cert: shown(&client_cert),
                    client_key: shown(&client_key).unwrap_or_else(|| "None".into()),
                    server_hostname: py_repr(py, &server_hostname),
                },
                ca_file: ca_file.map(Into::into),
                client_cert: client_cert.map(Into::into),
                client_key: client_key.map(Into::into),
                server_hostname,
            }
        });
        let tls_options = match &settings {
            None => None,
            Some(t) => Some(t.options().map_err(|e| {
                let cx = Context {
                    addr: &addr,
                    what: "HELLO",
                    op_view: "HELLO",
                    n: 0,
                    unit: "",
                    wait: timeout,
                    connecting: true,
                    tls: Some(&t.shown),
                };
                raise(py, failure::tls_failure(&e, &cx), &addr)
            })?),
        };
        let core = Core {
            core: blocking::Core::new(Options {
                connect_to,
                token,
                client_name,
                timeout,
                pool_size: pool_size.max(1),
                retry_overloaded,
                overload_backoff,
                tls: tls_options,
            }),
            addr,
            tls: settings,
        };
        core.connect(py)?;
        Ok(core)
    }

    /// `None` for a plaintext client; over TLS, the name the proxy's certificate is verified
    /// against (and sent as SNI). For tests and `repr`.
    #[getter]
    fn tls_server_hostname(&self) -> Option<String> {
        self.tls.as_ref().map(|t| t.server_hostname.clone())
    }

    /// GET: a [`Reply`] whose buffer is the rows. `keys` is a list of str or bytes.
    #[pyo3(signature = (view, keys, deadline=None, bypass_cache=false))]
    fn get(
        &self,
        py: Python<'_>,
        view: &str,
        keys: &Bound<'_, PyList>,
        deadline: Option<&Bound<'_, PyAny>>,
        bypass_cache: bool,
    ) -> PyResult<Reply> {
        let copied = keys_of(py, keys)?;
        let deadline_us = deadline_of(py, deadline)?;
        let opts = GetOptions {
            bypass_cache,
            deadline: deadline_us.map(Duration::from_micros),
        };
        // The server may take the whole deadline; the client must not give up before it answers.
        let wait = opts
            .deadline
            .map_or(self.timeout(), |d| d.max(self.timeout()));
        let live = self.live(py, "GET")?;
        let slices = copied.slices();
        let out = py.detach(|| {
            let client = live.client();
            // Python's policy: a schema cached before the call may predate a reload that removed
            // and re-added the view, so UNKNOWN_VIEW refetches it once (the Rust client has
            // dropped it from its cache by then).
            let cached = client.cached_schema(view).is_some();
            let first = self.core.call(
                &live,
                wait,
                |c| c.get_with(view, &slices, opts),
                signal_hook(),
            );
            match first {
                Outcome::Done(Err(e)) if cached && e.code() == Some(ErrorCode::UnknownView) => {
                    self.core.call(
                        &live,
                        wait,
                        |c| c.get_with(view, &slices, opts),
                        signal_hook(),
                    )
                }
                other => other,
            }
        });
        match out {
            Outcome::Done(Ok(batch)) => Ok(Reply { batch }),
            other => {
                let v = Self::view_repr(py, view);
                let n = copied.len();
                let what = format!("GET {v} ({})", plural(n, "key"));
                let op_view = format!("GET {v}");
                let cx = self.cx(&what, &op_view, n, "keys", wait);
                self.finish(py, other, &cx).map(|batch| Reply { batch })
            }
        }
    }

    /// PUT of rows already encoded for the view's cached schema: `entries` is a list of
    /// `(key, computed_at_ms, row bytes)`. Returns the rows written. No retry here: the caller
    /// re-encodes after a SCHEMA_MISMATCH.
    fn put(&self, py: Python<'_>, view: &str, entries: &Bound<'_, PyList>) -> PyResult<u32> {
        let mut rows = Vec::with_capacity(entries.len());
        for item in entries.iter() {
            let (key, at, row): (Bound<'_, PyAny>, u64, PyBackedBytes) = item.extract()?;
            let key = key_of(py, key)?;
            rows.push(PutEntry {
                key: Bytes::copy_from_slice(key.as_ref()),
                computed_at_ms: at,
                row: Bytes::copy_from_slice(&row),
            });
        }
        let wait = self.timeout();
        let live = self.live(py, "PUT")?;
        let out = py.detach(|| {
            self.core
                .call(&live, wait, |c| c.put_raw(view, &rows), signal_hook())
        });
        let v = Self::view_repr(py, view);
        let what = format!("PUT {v} ({})", plural(rows.len(), "row"));
        let op_view = format!("PUT {v}");
        let cx = self.cx(&what, &op_view, rows.len(), "rows", wait);
        self.finish(py, out, &cx)
    }

    /// The view's schema as `(view_id, schema_id, row_bytes, stale_after_ms, max_staleness_ms,
    /// [(dtype, name, default), ...])`: the cached one, or fetched (`refresh` refetches).
    fn schema(&self, py: Python<'_>, view: &str, refresh: bool) -> PyResult<Py<PyTuple>> {
        let wait = self.timeout();
        let live = self.live(py, "SCHEMA")?;
        if refresh {
            live.client().forget_schema(view);
        }
        let out = py.detach(|| {
            self.core
                .call(&live, wait, |c| c.schema(view), signal_hook())
        });
        let what = format!("SCHEMA {}", Self::view_repr(py, view));
        let cx = self.cx(&what, &what, 0, "", wait);
        let schema = self.finish(py, out, &cx)?;
        schema_tuple(py, schema.reply())
    }

    /// The schema id the native cache holds for `view`, if any (no I/O).
    fn cached_schema_id(&self, view: &str) -> Option<u32> {
        self.core
            .peek()
            .and_then(|l| l.client().cached_schema(view))
            .map(|s| s.schema_id())
    }

    /// One PING; returns the round trip in seconds.
    fn ping(&self, py: Python<'_>) -> PyResult<f64> {
        let wait = self.timeout();
        let live = self.live(py, "PING")?;
        let out = py.detach(|| self.core.call(&live, wait, |c| c.ping(), signal_hook()));
        let cx = self.cx("PING", "PING", 0, "", wait);
        self.finish(py, out, &cx).map(|d| d.as_secs_f64())
    }

    /// Closes the client: calls waiting end with ClientClosed within a slice (50 ms).
    fn close(&self) {
        self.core.close();
    }

    #[getter]
    fn closed(&self) -> bool {
        self.core.is_closed()
    }

    #[getter]
    fn max_frame(&self) -> u32 {
        self.core.max_frame()
    }

    #[getter]
    fn max_batch(&self) -> u32 {
        self.core.max_batch()
    }

    #[getter]
    fn server(&self) -> String {
        self.core.server()
    }

    #[getter]
    fn overload_retries(&self) -> u64 {
        self.core.overload_retries(self.core.peek().as_deref())
    }

    #[getter]
    fn overload_retries_refused(&self) -> u64 {
        self.core
            .overload_retries_refused(self.core.peek().as_deref())
    }

    /// Calls waiting for replies, over all threads.
    fn inflight(&self) -> usize {
        self.core.inflight()
    }
}

fn schema_tuple(py: Python<'_>, r: &featureproxy_protocol::SchemaReply) -> PyResult<Py<PyTuple>> {
    let features = r
        .features
        .iter()
        .map(|f| (f.dtype as u8, f.name.as_str(), PyBytes::new(py, &f.default)))
        .collect::<Vec<_>>();
    Ok((
        r.view_id,
        r.schema_id,
        r.row_bytes,
        r.stale_after_ms,
        r.max_staleness_ms,
        features,
    )
        .into_pyobject(py)?
        .unbind())
}

// ---- the reply

/// A GET's answer, read in place from the received frame. Quacks like
/// `featureproxy.protocol.GetReply` for `Batch`: `data` is the reply itself, whose buffer is the
/// rows (`rows_offset` 0, 8-byte aligned in memory).
#[pyclass(frozen, module = "featureproxy_native")]
pub struct Reply {
    batch: Batch,
}

#[pymethods]
impl Reply {
    #[getter]
    fn n(&self) -> usize {
        self.batch.len()
    }

    #[getter]
    fn view_id(&self) -> u16 {
        self.batch.response().view_id
    }

    #[getter]
    fn schema_id(&self) -> u32 {
        self.batch.response().schema_id
    }

    #[getter]
    fn row_bytes(&self) -> u32 {
        self.batch.response().row_bytes
    }

    #[getter]
    fn reserved(&self) -> u16 {
        0
    }

    /// Where the rows start in `data`: at once.
    #[getter]
    fn rows_offset(&self) -> usize {
        0
    }

    /// The status bytes (copied: one per entity).
    #[getter]
    fn statuses<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.batch.response().status_bytes())
    }

    /// The ages in ms, `u32::MAX` where no value was found.
    #[getter]
    fn ages<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let r = self.batch.response();
        PyTuple::new(py, (0..self.batch.len()).map(|i| r.age_ms(i)))
    }

    /// The buffer holding the rows: this object.
    #[getter]
    fn data(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// The rows as a memoryview (`n * row_bytes` bytes).
    #[getter]
    fn rows<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyMemoryView>> {
        PyMemoryView::from(slf.as_any())
    }

    /// The schema the reply was decoded with, as `Core.schema` returns it.
    fn schema(&self, py: Python<'_>) -> PyResult<Py<PyTuple>> {
        schema_tuple(py, self.batch.schema().reply())
    }

    fn __len__(&self) -> usize {
        self.batch.matrix_bytes().len()
    }

    /// Read-only, one-dimensional, bytes: the rows, where they were received.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("the buffer view is NULL"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("a featureproxy reply is read-only"));
        }
        let rows = slf.get().batch.matrix_bytes();
        let (ptr, len) = (rows.as_ptr(), rows.len());
        // SAFETY: `view` is non-null and the caller's to fill; `ptr..ptr+len` lives in the
        // frame this object owns (immutably: frozen pyclass) for as long as the view holds its
        // reference to the object, which PyBuffer_FillInfo takes.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                ptr as *mut std::ffi::c_void,
                len as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "<featureproxy_native.Reply n={} schema_id={:#010x}>",
            self.batch.len(),
            self.batch.response().schema_id
        )
    }
}

// ---- the codec, for the parity tests and the asyncio client

fn protocol_error(
    py: Python<'_>,
    e: &featureproxy_protocol::ProtocolError,
    request_id: u32,
) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let obj = errors(py)?.getattr("ProtocolError")?.call1((
            e.code as u16,
            e.message.as_str(),
            request_id,
        ))?;
        Ok(PyErr::from_value(obj))
    };
    build().unwrap_or_else(|e| e)
}

/// Splits one frame off the start of `data`: `(op, request_id, consumed)`, or None while more
/// bytes are needed. Raises `ProtocolError(code, message, request_id)` for a bad header.
#[pyfunction]
fn decode_frame(py: Python<'_>, data: &[u8], max_frame: u32) -> PyResult<Option<(u8, u32, usize)>> {
    let mut buf = BytesMut::from(data);
    match split_frame(&mut buf, max_frame) {
        Ok(Some(f)) => Ok(Some((f.op, f.request_id, data.len() - buf.len()))),
        Ok(None) => Ok(None),
        Err((rid, e)) => Err(protocol_error(py, &e, rid)),
    }
}

fn whole_frame(py: Python<'_>, data: &[u8]) -> PyResult<Frame> {
    let mut buf = BytesMut::from(data);
    match split_frame(&mut buf, u32::MAX) {
        Ok(Some(f)) if buf.is_empty() => Ok(f),
        Ok(_) => Err(PyValueError::new_err("not exactly one whole frame")),
        Err((rid, e)) => Err(protocol_error(py, &e, rid)),
    }
}

fn limits(max_batch: u32) -> Limits {
    Limits {
        max_batch,
        ..Limits::default()
    }
}

/// Decodes one whole response frame into plain values (the parity tests compare them with the
/// Python codec's): `("hello", version, shard, max_frame, max_batch, server)`, `("pong",)`,
/// `("schema", view_id, schema_id, row_bytes, stale_after_ms, max_staleness_ms, features)`,
/// `("get", view_id, schema_id, n, row_bytes, statuses, ages, rows)`, `("put", written)`,
/// `("error", code, message)`.
#[pyfunction]
fn decode_response(py: Python<'_>, data: &[u8], max_batch: u32) -> PyResult<Py<PyAny>> {
    let frame = whole_frame(py, data)?;
    let resp = Response::decode(&frame, &limits(max_batch))
        .map_err(|e| protocol_error(py, &e, frame.request_id))?;
    response_tuple(py, &resp)
}

fn response_tuple(py: Python<'_>, resp: &Response) -> PyResult<Py<PyAny>> {
    Ok(match resp {
        Response::Hello(h) => (
            "hello",
            h.version,
            h.shard,
            h.max_frame,
            h.max_batch,
            h.server.as_str(),
        )
            .into_py_any(py)?,
        Response::Pong => ("pong",).into_py_any(py)?,
        Response::Schema(s) => {
            let t = schema_tuple(py, s)?;
            let t = t.bind(py);
            let mut items = vec!["schema".into_py_any(py)?];
            items.extend(t.iter().map(|x| x.unbind()));
            PyTuple::new(py, items)?.into_any().unbind()
        }
        Response::Get(g) => {
            let n = g.n as usize;
            let ages = (0..n).map(|i| g.age_ms(i)).collect::<Vec<_>>();
            (
                "get",
                g.view_id,
                g.schema_id,
                g.n,
                g.row_bytes,
                PyBytes::new(py, g.status_bytes()),
                PyTuple::new(py, ages)?,
                PyBytes::new(py, if n == 0 { &[] } else { g.matrix() }),
            )
                .into_py_any(py)?
        }
        Response::Put { written } => ("put", *written).into_py_any(py)?,
        Response::Error(e) => ("error", e.code as u16, e.message.as_str()).into_py_any(py)?,
    })
}

/// Decodes one whole request frame into plain values: `("hello", version, token, client_name)`,
/// `("ping",)`, `("schema", view)`, `("get", view_id, flags, schema_id, deadline_us, keys)`,
/// `("put", view_id, schema_id, n, entries)` with `entries` split by `row_bytes` (None: not
/// split, `()`).
#[pyfunction]
#[pyo3(signature = (data, max_batch, row_bytes=None))]
fn decode_request(
    py: Python<'_>,
    data: &[u8],
    max_batch: u32,
    row_bytes: Option<usize>,
) -> PyResult<Py<PyAny>> {
    let frame = whole_frame(py, data)?;
    let req = Request::decode(&frame, &limits(max_batch))
        .map_err(|e| protocol_error(py, &e, frame.request_id))?;
    Ok(match &req {
        Request::Hello(h) => {
            ("hello", h.version, h.token.as_str(), h.client_name.as_str()).into_py_any(py)?
        }
        Request::Ping => ("ping",).into_py_any(py)?,
        Request::Schema { view } => ("schema", view.as_str()).into_py_any(py)?,
        Request::Get(g) => {
            let keys = g
                .keys
                .iter()
                .map(|k| PyBytes::new(py, k))
                .collect::<Vec<_>>();
            (
                "get",
                g.view_id,
                g.flags,
                g.schema_id,
                g.deadline_us,
                PyTuple::new(py, keys)?,
            )
                .into_py_any(py)?
        }
        Request::Put(p) => {
            let entries = match row_bytes {
                None => Vec::new(),
                Some(rb) => p
                    .entries("vector", rb)
                    .map_err(|e| protocol_error(py, &e, frame.request_id))?
                    .iter()
                    .map(|e| {
                        (
                            PyBytes::new(py, &e.key),
                            e.computed_at_ms,
                            PyBytes::new(py, &e.row),
                        )
                            .into_py_any(py)
                    })
                    .collect::<PyResult<Vec<_>>>()?,
            };
            (
                "put",
                p.view_id,
                p.schema_id,
                p.n,
                PyTuple::new(py, entries)?,
            )
                .into_py_any(py)?
        }
    })
}

/// Decodes a whole frame (`kind` "request" or "response") and encodes it again with the Rust
/// codec: the parity tests check the bytes come back the same.
#[pyfunction]
fn reencode<'py>(py: Python<'py>, kind: &str, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let frame = whole_frame(py, data)?;
    let lim = limits(u32::MAX);
    let mut out = BytesMut::new();
    if kind == "request" {
        Request::decode(&frame, &lim)
            .map_err(|e| protocol_error(py, &e, frame.request_id))?
            .encode(&mut out, frame.request_id);
    } else {
        Response::decode(&frame, &lim)
            .map_err(|e| protocol_error(py, &e, frame.request_id))?
            .encode(&mut out, frame.request_id);
    }
    Ok(PyBytes::new(py, &out))
}

/// A whole GET request frame, keys checked as the sync client checks them. For the asyncio
/// client's requests.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn encode_get<'py>(
    py: Python<'py>,
    request_id: u32,
    view_id: u16,
    flags: u16,
    schema_id: u32,
    deadline_us: u32,
    keys: &Bound<'py, PyList>,
) -> PyResult<Bound<'py, PyBytes>> {
    let keys = keys_of(py, keys)?;
    let mut out = BytesMut::with_capacity(28 + 2 * keys.len() + keys.bytes.len());
    Request::encode_get(
        &mut out,
        request_id,
        view_id,
        flags,
        schema_id,
        deadline_us,
        &keys.slices(),
    );
    Ok(PyBytes::new(py, &out))
}

/// The body of a GET request (the frame without its 12-byte header), keys checked as the sync
/// client checks them: what the asyncio client sends when the native core is installed (its
/// Python transport frames it with the request id it picks).
#[pyfunction]
fn encode_get_body<'py>(
    py: Python<'py>,
    view_id: u16,
    flags: u16,
    schema_id: u32,
    deadline_us: u32,
    keys: &Bound<'py, PyList>,
) -> PyResult<Bound<'py, PyBytes>> {
    let keys = keys_of(py, keys)?;
    let mut out = BytesMut::with_capacity(28 + 2 * keys.len() + keys.bytes.len());
    Request::encode_get(
        &mut out,
        0,
        view_id,
        flags,
        schema_id,
        deadline_us,
        &keys.slices(),
    );
    Ok(PyBytes::new(py, &out[featureproxy_protocol::HEADER_LEN..]))
}

/// Raises the exception the mapping gives example `i` of a fixed list of Rust errors (the
/// tests check each class and message against the pure-Python client's); IndexError past the
/// end. `addr` names the proxy.
#[pyfunction]
fn _raise_example(py: Python<'_>, i: usize, addr: &str) -> PyResult<()> {
    use featureproxy_client::ProtocolError;
    let io = |code| std::io::Error::from_raw_os_error(code);
    let examples: Vec<Error> = vec![
        Error::Server {
            code: ErrorCode::Forbidden,
            message: "GET of view flat: not allowed for this principal".into(),
        },
        Error::Server {
            code: ErrorCode::Overloaded,
            message: "shed".into(),
        },
        Error::Timeout {
            addr: addr.into(),
            after: Duration::from_millis(250),
        },
        Error::Connect {
            addr: addr.into(),
            source: io(libc::ECONNREFUSED),
        },
        Error::ConnectionClosed {
            addr: addr.into(),
            reason: "the server closed the connection".into(),
        },
        Error::Protocol(ProtocolError::malformed("GET reply is short")),
        Error::BatchTooLarge { n: 5, max_batch: 4 },
        Error::FrameTooLarge {
            what: "reply",
            len: 100,
            max_frame: 64,
        },
        Error::BadRow("row 0: bad".into()),
        Error::Tls(featureproxy_client::TlsError::new(
            featureproxy_client::TlsFailure::UntrustedServer,
            "TLS with featureproxy failed",
            "invalid peer certificate: UnknownIssuer",
        )),
    ];
    let Some(e) = examples.get(i) else {
        return Err(pyo3::exceptions::PyIndexError::new_err(i));
    };
    let cx = Context {
        addr,
        what: "GET 'flat' (5 keys)",
        op_view: "GET 'flat'",
        n: 5,
        unit: "keys",
        wait: Duration::from_millis(250),
        connecting: false,
        tls: None,
    };
    Err(raise(py, failure::failure(e, &cx), addr))
}

#[pymodule]
fn featureproxy_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    blocking::watch_forks();
    m.add_class::<Core>()?;
    m.add_class::<Reply>()?;
    m.add_function(wrap_pyfunction!(decode_frame, m)?)?;
    m.add_function(wrap_pyfunction!(decode_request, m)?)?;
    m.add_function(wrap_pyfunction!(decode_response, m)?)?;
    m.add_function(wrap_pyfunction!(reencode, m)?)?;
    m.add_function(wrap_pyfunction!(encode_get, m)?)?;
    m.add_function(wrap_pyfunction!(encode_get_body, m)?)?;
    m.add_function(wrap_pyfunction!(_raise_example, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("SLICE_SECONDS", blocking::SLICE.as_secs_f64())?;
    Ok(())
}
