"""asyncio client: one connection, many requests in flight, matched by request_id."""

from __future__ import annotations

import asyncio
import ssl
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
    ProtocolError,
    RequestTimeout,
    TLSError,
    server_error,
)
from .schema import Schema

__all__ = ["AsyncClient"]


class _Protocol(asyncio.Protocol):
    """The connection: frames in, each handed to the future registered under its request_id."""

    def __init__(self, address: str, hello: bytes | None = None):
        self.address = address
        self._hello = hello  # the HELLO frame (request id 1), written by connection_made
        self.hello_reply: asyncio.Future | None = None
        self.asm = p.FrameAssembler()
        self.pending: dict[int, tuple[asyncio.Future, str]] = {}  # request_id -> (future, what)
        self.transport: asyncio.Transport | None = None
        self.alive = False
        self.max_batch = p.DEFAULT_MAX_BATCH
        self._next = 0
        self._why: str | None = None
        self.lost: Exception | None = None  # what connection_lost was given
        self._paused = False
        self._drained: asyncio.Future | None = None
        self._out: list[bytes] = []  # frames written in this turn of the loop, sent together

    # asyncio callbacks

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.alive = True
        if self._hello is not None:
            # Written here, not a turn of the loop later: over TLS, asyncio has not yet sent the
            # client's last handshake flight, and the HELLO leaves in the same TCP write. A server
            # refusing the client's certificate (which TLS 1.3 tells only after the client's
            # handshake is done) has then read all the client sent when it closes, so its kernel
            # sends FIN and not a RST that would destroy its alert.
            self.hello_reply = asyncio.get_running_loop().create_future()
            self.pending[1] = (self.hello_reply, "HELLO")
            self._next = 1
            transport.write(self._hello)
            self._hello = None

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.asm.feed(data)
        except p.ProtocolError as e:
            self.abort(f"the server sent bytes that are not protocol v1 ({e.message})")
            return
        pending = self.pending
        for frame in frames:
            entry = pending.pop(frame.request_id, None)
            if entry is not None:
                if not entry[0].done():
                    entry[0].set_result(frame)
            elif frame.request_id == 0 and frame.op == p.OP_ERROR:
                try:
                    resp = p.decode_response(frame)
                    msg = str(server_error(resp.code, resp.message))
                except ProtocolError as e:
                    msg = f"bad ERROR frame: {e.message}"
                self.abort(f"server error on the connection ({msg})")
                return
            # else: a late reply to a request that timed out or was cancelled: dropped.

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        why = self._why or (f"connection error: {exc}" if exc else "connection closed by the server")
        self._fail_all(why)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # helpers

    def _fail_all(self, why: str) -> None:
        self.alive = False
        self._why = self._why or why
        pending, self.pending = self.pending, {}
        for fut, what in pending.values():
            if not fut.done():
                if why == "client closed":
                    fut.set_exception(
                        ClientClosed(f"featureproxy {self.address}: client closed while waiting for {what}")
                    )
                else:
                    fut.set_exception(ConnectionLost(f"featureproxy {self.address}: {why} while waiting for {what}"))

    def abort(self, why: str) -> None:
        self._why = self._why or why
        self._fail_all(why)
        if self.transport is not None:
            self.transport.abort()

    def write(self, frame: bytes) -> None:
        """Queues a frame; the frames queued during one turn of the event loop go out in one
        write (one syscall for many concurrent callers)."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(frame)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def next_id(self) -> int:
        rid = self._next
        while True:
            rid = rid + 1 if rid < 0xFFFFFFFF else 1
            if rid not in self.pending:
                self._next = rid
                return rid

    async def drain(self) -> None:
        if self._paused and self.alive:
            if self._drained is None or self._drained.done():
                self._drained = asyncio.get_running_loop().create_future()
            await self._drained


class AsyncClient:
    """asyncio client of one featureproxy: all calls share one pipelined connection.

    Create it with ``await AsyncClient.connect(host, port, *, token=None, timeout=2.0,
    retry_overloaded=True, overload_backoff=0.02, tls=False, ca_file=None, client_cert=None,
    client_key=None, server_hostname=None)``. The operations and options mirror
    :class:`featureproxy.Client` (the same default timeout, for the same reason, the same
    overload retries, counted in ``overload_retries`` and ``overload_retries_refused``, and the
    same TLS options: a failed handshake or a refused client certificate raises
    :class:`TLSError` from ``connect``) and are coroutines, ``close()`` included. After a
    dropped connection the next call reconnects.

    Its transport is the event loop's own on either core; with the native core installed, a
    GET's keys are checked and encoded by the native codec (the same messages; a bad key is
    then reported after the view's schema is at hand rather than before).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: str | None = None,
        timeout: float = 2.0,
        client_name: str = c.DEFAULT_CLIENT_NAME,
        retry_overloaded: bool = True,
        overload_backoff: float = 0.02,
        tls: bool | ssl.SSLContext = False,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        server_hostname: str | None = None,
    ):
        self.host, self.port = host, port
        self.address = f"{host}:{port}"
        self._tls = _tls.config(tls, ca_file, client_cert, client_key, server_hostname, host, self.address)
        self.timeout = float(timeout)
        self.retry_overloaded = bool(retry_overloaded)
        self._overload = _overload.OverloadRetry(overload_backoff)
        # The native codec when the native core is installed: it checks and encodes a GET's keys
        # (its transport stays the event loop's own).
        self._codec = _impl.native
        self._token = token
        self._name = client_name
        self._proto: _Protocol | None = None
        self._connect_lock = asyncio.Lock()
        self._schemas: dict[str, Schema] = {}
        self._schema_fetches: dict[str, asyncio.Future] = {}
        self._closed = False
        self.max_frame = p.DEFAULT_MAX_FRAME
        self.max_batch = p.DEFAULT_MAX_BATCH
        self.server: str | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        token: str | None = None,
        timeout: float = 2.0,
        client_name: str = c.DEFAULT_CLIENT_NAME,
        retry_overloaded: bool = True,
        overload_backoff: float = 0.02,
        tls: bool | ssl.SSLContext = False,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        server_hostname: str | None = None,
    ) -> "AsyncClient":
        """Makes a client and opens its connection (so a wrong address or a failed TLS
        handshake raises here). The arguments are the constructor's."""
        client = cls(
            host,
            port,
            token=token,
            timeout=timeout,
            client_name=client_name,
            retry_overloaded=retry_overloaded,
            overload_backoff=overload_backoff,
            tls=tls,
            ca_file=ca_file,
            client_cert=client_cert,
            client_key=client_key,
            server_hostname=server_hostname,
        )
        await client._connection()
        return client

    # ---- connection

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None and proto.alive:
            return proto
        async with self._connect_lock:
            if self._closed:
                raise ClientClosed(f"featureproxy {self.address}: client closed")
            proto = self._proto
            if proto is not None and proto.alive:
                return proto
            loop = asyncio.get_running_loop()
            tls = self._tls
            extra = {}
            if tls is not None:
                extra = dict(ssl=tls.context, server_hostname=tls.server_hostname)
            hello = p.encode_request(1, p.Hello(p.VERSION, self._token or "", self._name))
            try:
                async with asyncio.timeout(self.timeout):
                    _, proto = await loop.create_connection(
                        lambda: _Protocol(self.address, hello), self.host, self.port, **extra
                    )
            except TimeoutError:
                if tls is not None:
                    raise TLSError(
                        f"featureproxy {self.address}: cannot connect and finish the TLS handshake within "
                        f"{self.timeout:g}s: is {self.address} the proxy's TLS port ([server.tls] listen), and "
                        f"is it answering?",
                        "timeout",
                    ) from None
                raise ConnectFailed(f"featureproxy {self.address}: cannot connect within {self.timeout:g}s") from None
            except OSError as e:
                if tls is not None and isinstance(e, ssl.SSLError):  # the handshake failed
                    raise tls.error(e, self.address) from e
                raise ConnectFailed(f"featureproxy {self.address}: cannot connect: {e.strerror or e}") from e
            try:
                assert proto.hello_reply is not None
                try:
                    async with asyncio.timeout(self.timeout):
                        frame = await proto.hello_reply
                except TimeoutError:
                    raise RequestTimeout("HELLO") from None
                resp = p.decode_response(frame)
            except RequestTimeout:
                proto.abort("no answer to HELLO")
                raise ConnectFailed(
                    f"featureproxy {self.address}: no answer to HELLO within {self.timeout:g}s"
                ) from None
            except ConnectionLost as e:
                if tls is not None and isinstance(proto.lost, ssl.SSLError):
                    # TLS 1.3: a server refusing the client's certificate says so here, after the
                    # client's side of the handshake is done.
                    raise tls.error(proto.lost, self.address) from proto.lost
                hint = _tls.PLAINTEXT_HINT if tls is None else tls.closed_hint()
                raise ConnectFailed(
                    f"featureproxy {self.address}: connection closed by the server during HELLO ({e}){hint}"
                ) from None
            except ProtocolError as e:
                proto.abort("bad HELLO reply")
                hint = _tls.PLAINTEXT_HINT if tls is None else ""
                raise ConnectFailed(
                    f"featureproxy {self.address}: HELLO reply is not protocol v1: {e.message}{hint}"
                ) from None
            if isinstance(resp, p.ErrorReply):
                proto.abort("HELLO refused")
                raise server_error(resp.code, resp.message, self.address)
            if not isinstance(resp, p.HelloReply):
                proto.abort("unexpected HELLO reply")
                raise ConnectFailed(f"featureproxy {self.address}: unexpected answer to HELLO (op 0x{frame.op:02x})")
            proto.asm.max_frame = resp.max_frame
            proto.max_batch = resp.max_batch
            self.max_frame, self.max_batch, self.server = resp.max_frame, resp.max_batch, resp.server
            self._proto = proto
            return proto

    async def _send(self, proto: _Protocol, op: int, body: bytes, what: str, timeout: float) -> p.Frame:
        if not proto.alive or proto.transport is None or proto.transport.is_closing():
            raise _Stale()
        rid = proto.next_id()
        fut = asyncio.get_running_loop().create_future()
        entry = (fut, what)
        proto.pending[rid] = entry
        proto.write(p.encode_frame(op, rid, body))
        try:
            async with asyncio.timeout(timeout):
                await proto.drain()
                return await fut
        except TimeoutError:
            raise RequestTimeout(
                f"featureproxy {self.address}: no reply to {what} within {timeout:g}s "
                f"(request {rid}; abandoned, a late reply will be dropped)"
            ) from None
        finally:
            if proto.pending.get(rid) is entry:
                del proto.pending[rid]

    async def _call(self, op: int, body: bytes, what: str, timeout: float | None = None):
        timeout = self.timeout if timeout is None else timeout
        proto = await self._connection()
        try:
            frame = await self._send(proto, op, body, what, timeout)
        except _Stale:
            proto = await self._connection()
            try:
                frame = await self._send(proto, op, body, what, timeout)
            except _Stale:
                raise ConnectionLost(f"featureproxy {self.address}: connection lost while sending {what}") from None
        try:
            return c.interpret(frame, op, proto.max_batch, self.address, what)
        except c.Broken as b:
            proto.abort(str(b.error))
            raise b.error from None

    def _inflight(self) -> int:
        return len(self._proto.pending) if self._proto is not None else 0

    @property
    def overload_retries(self) -> int:
        """See :attr:`featureproxy.Client.overload_retries`."""
        return self._overload.retries

    @property
    def overload_retries_refused(self) -> int:
        """See :attr:`featureproxy.Client.overload_retries_refused`."""
        return self._overload.refused

    # ---- operations

    async def ping(self) -> float:
        """Round trip of one PING, in seconds."""
        t0 = time.perf_counter()
        await self._call(p.OP_PING, b"", "PING")
        return time.perf_counter() - t0

    async def schema(self, view: str, *, refresh: bool = False) -> Schema:
        """The view's schema, cached per client; concurrent fetches of one view share one SCHEMA."""
        if not refresh:
            s = self._schemas.get(view)
            if s is not None:
                return s
        fetch = self._schema_fetches.get(view)
        if fetch is None:
            fetch = asyncio.ensure_future(self._fetch_schema(view))
            self._schema_fetches[view] = fetch
            fetch.add_done_callback(
                lambda f: self._schema_fetches.pop(view, None) if self._schema_fetches.get(view) is f else None
            )
        return await asyncio.shield(fetch)

    async def _fetch_schema(self, view: str) -> Schema:
        reply = await self._call(p.OP_SCHEMA, p.SchemaRequest(view).encode_body(), f"SCHEMA {view!r}")
        s = Schema.from_reply(view, reply)
        self._schemas[view] = s
        return s

    async def get(self, view: str, keys, *, deadline: float | None = None, bypass_cache: bool = False) -> Batch:
        """See :meth:`featureproxy.Client.get`."""
        overload = self._overload if self.retry_overloaded else None
        return await self._run(
            _retry.get(
                self,
                view,
                keys,
                deadline,
                bypass_cache,
                cached=view in self._schemas,
                overload=overload,
                codec=self._codec,
            )
        )

    async def put(self, view: str, rows) -> int:
        """See :meth:`featureproxy.Client.put`."""
        return await self._run(_retry.put(self, view, rows, cached=view in self._schemas))

    async def _run(self, steps: _retry.Steps):
        """See :meth:`featureproxy.Client._run`; here with awaits."""
        plan = _retry.Plan(steps)
        while not plan.done:
            step = plan.step
            try:
                if isinstance(step, _retry.Call):
                    value = await self._call(step.op, step.body, step.what, step.timeout)
                elif isinstance(step, _retry.Pause):
                    value = await asyncio.sleep(step.seconds)
                else:
                    value = await self.schema(step.view, refresh=step.refresh)
            except Exception as e:
                plan.throw(e)
            else:
                plan.send(value)
        return plan.result

    # ---- lifecycle

    async def close(self) -> None:
        """Closes the connection; calls waiting for replies raise ClientClosed."""
        self._closed = True
        proto, self._proto = self._proto, None
        if proto is not None:
            proto._why = "client closed"
            proto._fail_all("client closed")
            if proto.transport is not None:
                proto.transport.close()

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> "AsyncClient":
        await self._connection()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        tls = " tls" if self._tls is not None else ""
        return f"<featureproxy.AsyncClient {self.address}{tls}{' closed' if self._closed else ''}>"


class _Stale(Exception):
    """The connection was found dead before the request was written."""
