"""Thread-safe blocking client: a small pool of pipelined connections."""

from __future__ import annotations

import itertools
import math
import os
import select
import socket
import ssl
import struct
import threading
import time
from typing import Any

from . import _common as c
from . import _impl, _overload, _retry, _tls
from . import protocol as p
from .batch import Batch
from .errors import (
    ClientClosed,
    ConnectFailed,
    ConnectionLost,
    FeatureProxyError,
    ProtocolError,
    RequestTimeout,
    SchemaMismatch,
    UnknownView,
    server_error,
)
from .schema import Schema

__all__ = ["Client"]

_RECV_SIZE = 256 * 1024


class _Waiter:
    """One caller waiting for one reply.

    ``lock`` is held while the waiter is not signaled; the connection releases it (``_signal``)
    when the reply or an error is set (``finished``), or to hand this caller the reader's role.
    """

    __slots__ = ("lock", "signaled", "finished", "frame", "error", "what")

    def __init__(self, what: str):
        self.lock = threading.Lock()
        self.lock.acquire()
        self.signaled = False
        self.finished = False
        self.frame: p.Frame | None = None
        self.error: Exception | None = None
        self.what = what


class _SendFailed(Exception):
    """The connection was found dead before the request left: safe to retry on a new one."""


class _Dead(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Conn:
    """One pipelined TCP connection, read by its callers (leader/follower, no reader thread).

    Each caller registers a waiter under a fresh request_id and sends its frame. At most one
    caller at a time is the reader: it reads the socket and hands every reply to the waiter
    registered under the reply's request_id, until its own reply is in; then it passes the role
    to a caller still waiting. A lone caller thus reads its own reply, without a thread switch.
    A reply whose waiter timed out (and so was removed) is dropped.
    """

    def __init__(
        self,
        sock: socket.socket,
        address: str,
        asm: p.FrameAssembler,
        hello: p.HelloReply,
        tls: _tls.Channel | None = None,
        send_lock: threading.Lock | None = None,
    ):
        self.sock = sock
        self.tls = tls  # None: plaintext
        self.address = address
        self.asm = asm
        self.hello = hello
        self.max_batch = hello.max_batch
        self.alive = True
        self._lock = threading.Lock()  # guards everything below and the waiters' flags
        self._send_lock = send_lock or threading.Lock()
        self._pending: dict[int, _Waiter] = {}
        self._reading = False
        self._next = 1  # request id 1 was the HELLO
        self._dead_reason: str | None = None
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        address: str,
        token: str | None,
        name: str,
        timeout: float,
        tls: _tls.TLSConfig | None = None,
    ) -> "_Conn":
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise ConnectFailed(f"featureproxy {address}: cannot connect: {e.strerror or e}") from e
        chan = None
        send_lock = threading.Lock()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = time.monotonic() + timeout
            if tls is not None:
                # TLS over memory BIOs (see _tls.Channel), not an SSLSocket: the connection's
                # threads send while another reads, which an SSLSocket does not allow.
                chan = _tls.Channel(sock, tls, send_lock)
                try:
                    chan.handshake(deadline)
                except _tls.Closed:
                    eof = ssl.SSLEOFError(8, "the server closed the connection")
                    raise tls.error(eof, address) from None
                except (ssl.SSLError, socket.timeout) as e:
                    raise tls.error(e, address) from e
                except OSError as e:
                    raise ConnectFailed(f"featureproxy {address}: TLS handshake failed: {e.strerror or e}") from e
            asm = p.FrameAssembler()
            hello = p.encode_request(1, p.Hello(p.VERSION, token or "", name))
            if chan is None:
                sock.sendall(hello)
            else:
                chan.sendall(hello)
            frames: list[p.Frame] = []
            while not frames:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout()
                sock.settimeout(left)
                data = sock.recv(_RECV_SIZE)
                if not data:
                    hint = _tls.PLAINTEXT_HINT if tls is None else tls.closed_hint()
                    raise ConnectFailed(f"featureproxy {address}: connection closed by the server during HELLO{hint}")
                if chan is not None:
                    try:
                        # TLS 1.3: a server refusing the client's certificate says so here, after
                        # the client's side of the handshake is done.
                        data = chan.decrypt(data)
                    except ssl.SSLError as e:
                        raise tls.error(e, address) from e
                    if chan.closed and not data:
                        raise ConnectFailed(
                            f"featureproxy {address}: connection closed by the server during HELLO{tls.closed_hint()}"
                        )
                frames = asm.feed(data)
            resp = p.decode_response(frames[0])
            if isinstance(resp, p.ErrorReply):
                raise server_error(resp.code, resp.message, address)
            if not isinstance(resp, p.HelloReply) or len(frames) > 1:
                raise ConnectFailed(f"featureproxy {address}: unexpected answer to HELLO (op 0x{frames[0].op:02x})")
            asm.max_frame = resp.max_frame
            sock.settimeout(None)
            # Reads wait in poll() with the call's timeout; a send stalled longer than
            # `timeout` fails with EAGAIN.
            tv = struct.pack("ll", int(timeout), int((timeout % 1) * 1e6))
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            except OSError:
                pass
            return cls(sock, address, asm, resp, chan, send_lock)
        except socket.timeout:
            sock.close()
            raise ConnectFailed(f"featureproxy {address}: no answer to HELLO within {timeout}s") from None
        except FeatureProxyError:  # ConnectFailed and TLSError are OSErrors too: as they are
            sock.close()
            raise
        except OSError as e:
            sock.close()
            hint = _tls.PLAINTEXT_HINT if tls is None else tls.closed_hint()
            raise ConnectFailed(f"featureproxy {address}: HELLO failed: {e.strerror or e}{hint}") from e
        except ProtocolError as e:
            sock.close()
            hint = _tls.PLAINTEXT_HINT if tls is None else ""
            raise ConnectFailed(f"featureproxy {address}: HELLO reply is not protocol v1: {e.message}{hint}") from e
        except BaseException:
            sock.close()
            raise

    # ---- state changes, all under self._lock

    def _signal(self, w: _Waiter) -> None:
        if not w.signaled:
            w.signaled = True
            w.lock.release()

    def _finish(self, w: _Waiter, frame: p.Frame | None = None, error: Exception | None = None) -> None:
        w.frame, w.error, w.finished = frame, error, True
        self._signal(w)

    def _promote(self) -> None:
        """Nobody reads: wake one waiting caller to take the reader's role."""
        if not self._reading:
            for w in self._pending.values():
                self._signal(w)
                break

    def _error(self, what: str) -> Exception:
        why = self._dead_reason or "connection lost"
        if why == "client closed":
            return ClientClosed(f"featureproxy {self.address}: client closed while waiting for {what}")
        return ConnectionLost(f"featureproxy {self.address}: {why} while waiting for {what}")

    def _die_locked(self, reason: str) -> None:
        if self._dead_reason is None:
            self._dead_reason = reason
        self.alive = False
        pending, self._pending = self._pending, {}
        for w in pending.values():
            self._finish(w, error=self._error(w.what))

    # ---- reading (only by the caller holding the reader's role)

    def _pump(self, timeout: float | None) -> None:
        """Waits up to ``timeout`` seconds (None: not at all) for bytes, reads what is there and
        dispatches every complete frame. Raises _Dead when the connection is gone."""
        if timeout is not None and not self._poll.poll(max(1, math.ceil(timeout * 1000))):
            return
        try:
            data = self.sock.recv(_RECV_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            raise _Dead(self._dead_reason or f"connection error: {e.strerror or e}") from None
        if not data:
            raise _Dead(self._dead_reason or "connection closed by the server")
        tls = self.tls
        if tls is not None:
            try:
                data = tls.decrypt(data)
            except OSError as e:  # ssl.SSLError, or sending what OpenSSL had to answer
                raise _Dead(self._dead_reason or f"TLS error: {getattr(e, 'reason', None) or e}") from None
        try:
            frames = self.asm.feed(data)
        except ProtocolError as e:
            raise _Dead(f"the server sent bytes that are not protocol v1 ({e.message})") from None
        with self._lock:
            for frame in frames:
                w = self._pending.pop(frame.request_id, None)
                if w is not None:
                    self._finish(w, frame=frame)
                elif frame.request_id == 0 and frame.op == p.OP_ERROR:
                    # A connection-level error (request_id 0): the server closes next.
                    try:
                        resp = p.decode_response(frame)
                        msg = str(server_error(resp.code, resp.message))
                    except ProtocolError as e:
                        msg = f"bad ERROR frame: {e.message}"
                    raise _Dead(f"server error on the connection ({msg})")
                # else: the reply to a request whose caller timed out: dropped.
        if tls is not None and tls.closed:  # the server's close_notify, after the replies above
            raise _Dead(self._dead_reason or "connection closed by the server")

    # ---- calls

    def call(self, op: int, body: bytes, what: str, timeout: float) -> p.Frame:
        deadline = time.monotonic() + timeout
        w = _Waiter(what)
        with self._lock:
            if not self.alive:
                raise _SendFailed()
            lead = not self._reading
            self._reading = self._reading or lead
            rid = self._next
            while True:
                rid = rid + 1 if rid < 0xFFFFFFFF else 1
                if rid not in self._pending:
                    break
            self._next = rid
            self._pending[rid] = w
        try:
            try:
                if lead:
                    # An idle connection may have been closed by the server since its last
                    # call: find out before sending on it.
                    self._pump(None)
                if self.tls is None:
                    with self._send_lock:
                        self.sock.sendall(p.encode_frame(op, rid, body))
                else:
                    self.tls.sendall(p.encode_frame(op, rid, body))
            except (_Dead, OSError) as e:
                stalled = isinstance(e, BlockingIOError)  # SO_SNDTIMEO: the server stopped reading
                if isinstance(e, _Dead):
                    reason = e.reason
                elif stalled:
                    reason = f"could not send within {timeout:g}s"
                else:
                    reason = f"send failed: {e.strerror or e}"
                with self._lock:
                    self._pending.pop(rid, None)
                    self._die_locked(reason)  # a partly sent frame leaves the stream unusable
                self._shutdown()
                if stalled:
                    raise RequestTimeout(f"featureproxy {self.address}: {reason}: {what}") from None
                raise _SendFailed() from None
            while True:
                with self._lock:
                    if w.finished:
                        break
                    if not lead and not self._reading:
                        self._reading = lead = True
                left = deadline - time.monotonic()
                if left <= 0:
                    with self._lock:
                        if w.finished:
                            break
                        self._pending.pop(rid, None)
                    raise RequestTimeout(
                        f"featureproxy {self.address}: no reply to {what} within {timeout:g}s "
                        f"(request {rid}; abandoned, a late reply will be dropped)"
                    )
                if lead:
                    try:
                        self._pump(left)
                    except _Dead as d:
                        with self._lock:
                            self._die_locked(d.reason)
                        self._shutdown()
                elif w.lock.acquire(timeout=left):
                    with self._lock:
                        w.signaled = False  # consumed: a later signal can wake us again
        finally:
            with self._lock:
                if lead:
                    self._reading = False
                # Hand the reader's role on: to a waiter if this caller read, or again if it was
                # handed to this caller and this caller is leaving without reading.
                self._promote()
                closing = lead and not self.alive
            if closing:
                self._close_socket()
        if w.error is not None:
            raise w.error
        return w.frame  # type: ignore[return-value]

    # ---- shutting down

    def _shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _close_socket(self) -> None:
        with self._lock:
            if self._reading:
                return  # the reader closes it when it leaves
        try:
            self.sock.close()
        except OSError:
            pass

    def kill(self, why: str) -> None:
        """Marks the connection dead and fails every waiting call with ``why``."""
        with self._lock:
            self._die_locked(why)
        self._shutdown()
        self._close_socket()

    def close(self) -> None:
        if self.tls is not None:
            self.tls.close_notify()
        self.kill("client closed")

    def inflight(self) -> int:
        return len(self._pending)


def _path(p) -> str | None:
    """A file argument as the native core takes it (a str path; ``os.PathLike`` allowed, as
    OpenSSL takes it)."""
    return None if p is None else os.fsdecode(p)


class Client:
    """Thread-safe client of one featureproxy.

    ``Client(host, port, *, token=None, timeout=2.0, pool_size=2, client_name=...,
    retry_overloaded=True, overload_backoff=0.02, tls=False, ca_file=None, client_cert=None,
    client_key=None, server_hostname=None)`` opens one connection at once (so a wrong
    address fails here) and up to ``pool_size`` connections, used round-robin, each with many
    requests in flight matched by request_id. A dropped connection is replaced on the next call
    that lands on it.

    ``timeout`` (seconds) bounds connecting and each call's wait for its reply (a ``get`` with a
    longer ``deadline`` waits that long). The default of 2 s leaves room for the proxy's own
    answer to a PUT: the proxy waits up to its ``write_timeout`` (1 s by default) for Redis, then
    answers TIMEOUT, or BACKEND_UNAVAILABLE saying the write may be partial; a client giving up
    at 1 s would miss it. A GET is answered by its ``deadline`` (the server's 50 ms by default)
    long before.

    ``retry_overloaded``: a GET the server shed (OVERLOADED, unserved) is sent once more, on the
    next pooled connection, after a pause drawn between half of ``overload_backoff`` (seconds;
    20 ms by default, twice the proxy's default ``shed_queue_delay``) and all of it; only when the
    pause ends within the GET's wait (counted from its first send) and the retry budget has a
    token (retries are at most 10% of the GETs sent over the last second, plus 10). Otherwise
    ``Overloaded`` is raised at once. ``overload_retries`` and ``overload_retries_refused`` count
    what happened. PUTs are never retried: the server does not shed them, and a write sent again
    after others wrote the same keys would overwrite newer rows (the last PUT wins).

    TLS (to the proxy's ``[server.tls]`` port): ``tls=True`` verifies the server's certificate
    against the system's trusted roots, or against ``ca_file`` (a PEM file of CA certificates),
    and against ``server_hostname`` (default: ``host``; an IP address is checked against the
    certificate's IP names). ``client_cert`` and ``client_key`` (PEM files; the key may be in
    the certificate's file) present a client certificate, which a proxy with ``client_ca_file``
    requires. Passing ``ca_file``, ``client_cert`` or ``server_hostname`` implies ``tls=True``.
    ``tls`` may instead be a ready ``ssl.SSLContext`` (``PROTOCOL_TLS_CLIENT``), used as is;
    then give no files. The client offers ALPN ``featureproxy/1`` and TLS 1.2 or newer. A
    handshake that fails, or a server that refuses the client's certificate, raises
    :class:`TLSError` (a ``ConnectFailed``) from the constructor, saying what happened and what
    to do; a client file that cannot be loaded raises it too. Tokens work over TLS as over
    plaintext.

    Cores (``impl``): with the native core installed (``featureproxy.__impl__ == "native"``), a
    plaintext client runs on the Rust client (``featureproxy_native``): each call releases the
    GIL once, for encoding, the round trip and decoding; threads share its pool as they share
    this one; after ``os.fork`` a child's first call connects anew without touching the
    parent's sockets. There ``timeout`` also bounds a reconnect within a call, and all
    ``pool_size`` connections are opened by the constructor. TLS on the native core is rustls,
    configured from the same arguments (``ca_file`` or the system's roots, ``client_cert``,
    ``client_key``, ``server_hostname``; TLS 1.2 or newer, ALPN ``featureproxy/1``), and its
    failures raise the same :class:`TLSError` reasons, quoting rustls where the Python core
    quotes OpenSSL (no ``__cause__``). A client given a ready ``ssl.SSLContext`` as ``tls=``
    runs on the pure-Python core (OpenSSL) either way: its settings cannot be carried over to
    rustls. ``impl`` says which core serves this client. A blocked call returns within ``timeout`` (or a GET's longer ``deadline``); on
    the main thread Ctrl-C ends it within about 50 ms with KeyboardInterrupt.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: str | None = None,
        timeout: float = 2.0,
        pool_size: int = 2,
        client_name: str = c.DEFAULT_CLIENT_NAME,
        retry_overloaded: bool = True,
        overload_backoff: float = 0.02,
        tls: bool | ssl.SSLContext = False,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        server_hostname: str | None = None,
    ):
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self._core = None  # the native core, when it serves this client
        self.host, self.port = host, port
        self.address = f"{host}:{port}"
        self._tls = _tls.config(tls, ca_file, client_cert, client_key, server_hostname, host, self.address)
        self.timeout = float(timeout)
        self.retry_overloaded = bool(retry_overloaded)
        self._overload = _overload.OverloadRetry(overload_backoff)
        self._token = token
        self._name = client_name
        self._slots: list[_Conn | None] = [None] * pool_size
        self._slot_locks = [threading.Lock() for _ in range(pool_size)]
        self._rr = itertools.count()
        self._schemas: dict[str, Schema] = {}
        self._closed = False
        self.max_frame = p.DEFAULT_MAX_FRAME
        self.max_batch = p.DEFAULT_MAX_BATCH
        self.server = None
        tls = self._tls
        # The native core speaks TLS from the same arguments (rustls); a ready SSLContext lives
        # inside OpenSSL and cannot be carried over, so that client stays on the Python core.
        if _impl.native is not None and (tls is None or not tls.custom):
            self._core = _impl.native.Core(
                host,
                port,
                token,
                client_name,
                self.timeout,
                pool_size,
                self.retry_overloaded,
                self._overload.backoff,
                tls is not None,
                None if tls is None else _path(tls.ca_file),
                None if tls is None else _path(tls.client_cert),
                None if tls is None else _path(tls.client_key),
                None if tls is None else tls.server_hostname,
            )
            return
        self._connection(0)

    # ---- what the native core knows (plain attributes on the Python core)

    @property
    def impl(self) -> str:
        """The core serving this client: ``"native"`` or ``"python"`` (see the class's docs)."""
        return "native" if self._core is not None else "python"

    @property
    def max_frame(self) -> int:
        """The server's max_frame (from HELLO)."""
        core = self._core
        return core.max_frame if core is not None else self._max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._max_frame = value

    @property
    def max_batch(self) -> int:
        """The server's max_batch (from HELLO)."""
        core = self._core
        return core.max_batch if core is not None else self._max_batch

    @max_batch.setter
    def max_batch(self, value: int) -> None:
        self._max_batch = value

    @property
    def server(self) -> str | None:
        """The server's name and version (from HELLO), e.g. ``featureproxy/0.1.0``."""
        core = self._core
        return core.server if core is not None else self._server

    @server.setter
    def server(self, value: str | None) -> None:
        self._server = value

    # ---- connections

    def _connection(self, i: int) -> _Conn:
        conn = self._slots[i]
        if conn is not None and conn.alive:
            return conn
        with self._slot_locks[i]:
            if self._closed:
                raise ClientClosed(f"featureproxy {self.address}: client closed")
            conn = self._slots[i]
            if conn is None or not conn.alive:
                conn = _Conn.open(
                    self.host, self.port, self.address, self._token, self._name, self.timeout, self._tls
                )
                self.max_frame, self.max_batch = conn.hello.max_frame, conn.hello.max_batch
                self.server = conn.hello.server
                self._slots[i] = conn
            return conn

    def _call(self, op: int, body: bytes, what: str, timeout: float | None = None):
        timeout = self.timeout if timeout is None else timeout
        slot = next(self._rr) % len(self._slots)
        conn = self._connection(slot)
        try:
            frame = conn.call(op, body, what, timeout)
        except _SendFailed:
            # The connection was found dead before the request left: retry once on a new one.
            conn = self._connection(slot)
            try:
                frame = conn.call(op, body, what, timeout)
            except _SendFailed:
                raise ConnectionLost(f"featureproxy {self.address}: connection lost while sending {what}") from None
        try:
            return c.interpret(frame, op, conn.max_batch, self.address, what)
        except c.Broken as b:
            conn.kill(str(b.error))
            raise b.error from None

    def _inflight(self) -> int:
        """Requests waiting for replies, over all connections (for tests and monitoring)."""
        if self._core is not None:
            return self._core.inflight()
        return sum(conn.inflight() for conn in self._slots if conn is not None)

    @property
    def overload_retries(self) -> int:
        """GETs sent again after the server shed them (OVERLOADED), since the client was made."""
        core = self._core
        return core.overload_retries if core is not None else self._overload.retries

    @property
    def overload_retries_refused(self) -> int:
        """Shed GETs not retried because the retry budget had no token left (they raised
        ``Overloaded``). A shed GET whose retry would not fit in its timeout is counted in neither."""
        core = self._core
        return core.overload_retries_refused if core is not None else self._overload.refused

    # ---- operations

    def ping(self) -> float:
        """Round trip of one PING, in seconds."""
        if self._core is not None:
            return self._core.ping()
        t0 = time.perf_counter()
        self._call(p.OP_PING, b"", "PING")
        return time.perf_counter() - t0

    def schema(self, view: str, *, refresh: bool = False) -> Schema:
        """The view's schema, cached per client (``refresh=True`` refetches it)."""
        core = self._core
        if core is not None:
            if not refresh:
                s = self._schemas.get(view)
                if s is not None and core.cached_schema_id(view) == s.schema_id:
                    return s
            return self._adopt_schema(view, core.schema(view, refresh), fresh=refresh)
        if not refresh:
            s = self._schemas.get(view)
            if s is not None:
                return s
        reply = self._call(p.OP_SCHEMA, p.SchemaRequest(view).encode_body(), f"SCHEMA {view!r}")
        s = Schema.from_reply(view, reply)
        self._schemas[view] = s
        return s

    def _adopt_schema(self, view: str, t: tuple, fresh: bool = False) -> Schema:
        """The Schema for the native core's schema tuple of ``view``: the cached one when it has
        the same schema_id, unless ``fresh`` (a refetch gives a new object, as on the Python core)."""
        s = self._schemas.get(view)
        if fresh or s is None or s.schema_id != t[1]:
            feats = tuple(p.FeatureSpec(dtype, name, default) for dtype, name, default in t[5])
            s = Schema.from_reply(view, p.SchemaReply(t[0], t[1], t[2], t[3], t[4], feats))
            self._schemas[view] = s
        return s

    def get(self, view: str, keys, *, deadline: float | None = None, bypass_cache: bool = False) -> Batch:
        """Reads the rows of ``keys`` (str or bytes each) in ``view``.

        ``deadline`` (seconds) is the server's time budget; entities not read in time come back
        DEGRADED with the defaults. ``bypass_cache`` skips the proxy's hot cache. A GET the server
        sheds is retried once (see the class's ``retry_overloaded``).
        """
        core = self._core
        if core is not None:
            if type(keys) is not list:
                keys = c.key_list(keys)
            reply = core.get(view, keys, deadline, bypass_cache)
            schema = self._schemas.get(view)
            if schema is None or schema.schema_id != reply.schema_id:
                schema = self._adopt_schema(view, reply.schema())
            return Batch(schema, keys, reply)
        overload = self._overload if self.retry_overloaded else None
        return self._run(
            _retry.get(self, view, keys, deadline, bypass_cache, cached=view in self._schemas, overload=overload)
        )

    def put(self, view: str, rows) -> int:
        """Writes rows: ``rows`` maps key -> ``(computed_at, values)``.

        ``computed_at``: unix milliseconds (int), unix seconds (float, as ``time.time()``) or an
        aware ``datetime``. ``values``: a sequence in feature order or a dict by feature name.
        Returns the number of rows written, after Redis acknowledged all of them. Never retried
        on OVERLOADED (see the class's docstring).
        """
        core = self._core
        if core is not None:
            return self._native_put(core, view, rows)
        return self._run(_retry.put(self, view, rows, cached=view in self._schemas))

    def _native_put(self, core, view: str, rows) -> int:
        """``put`` on the native core, with ``_retry.put``'s policy: rows encoded here for the
        cached schema, refetched and re-encoded once when the server says it changed."""
        items = c.put_items(rows)
        cached = core.cached_schema_id(view) is not None
        schema = self.schema(view)
        for attempt in (0, 1):
            entries = [(k, c.computed_at_ms(t), schema.encode_row(v)) for k, t, v in items]
            try:
                return core.put(view, entries)
            except (SchemaMismatch, UnknownView) as e:
                if _retry.refetch(e, attempt, cached):
                    schema = self.schema(view, refresh=True)
                    continue
                raise
        raise AssertionError("unreachable")

    def _run(self, steps: _retry.Steps):
        """Carries out a GET or PUT whose retries ``_retry`` decides, with blocking calls."""
        plan = _retry.Plan(steps)
        while not plan.done:
            step = plan.step
            try:
                if isinstance(step, _retry.Call):
                    value = self._call(step.op, step.body, step.what, step.timeout)
                elif isinstance(step, _retry.Pause):
                    value = time.sleep(step.seconds)
                else:
                    value = self.schema(step.view, refresh=step.refresh)
            except Exception as e:
                plan.throw(e)
            else:
                plan.send(value)
        return plan.result

    # ---- lifecycle

    def close(self) -> None:
        """Closes every connection; calls waiting for replies raise ClientClosed."""
        self._closed = True
        if self._core is not None:
            self._core.close()
            return
        for i, lock in enumerate(self._slot_locks):
            with lock:
                conn, self._slots[i] = self._slots[i], None
            if conn is not None:
                conn.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        tls = " tls" if self._tls is not None else ""
        return (
            f"<featureproxy.Client {self.address}{tls} pool={len(self._slots)} {self.impl}"
            f"{' closed' if self._closed else ''}>"
        )

