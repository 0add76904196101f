"""Both clients over TLS, against the proxy's own TLS port ([server.tls]) with real handshakes,
using the committed test certificates in tests/fixtures/tls (see remake.sh there).

The sync client runs on the core python/run-tests.sh chose (FEATUREPROXY_IMPL): OpenSSL on the
Python core, rustls on the native one. Both raise the same TLSError reasons with the same
messages, except the part in parentheses that quotes the TLS library (OpenSSL's words, or
rustls'), and the Python core's ``__cause__`` (the ssl exception); the tests check each core's.
A ready SSLContext keeps a client on the Python core either way."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
import time

import pytest

import featureproxy
from featureproxy import Status, TLSError
from featureproxy import protocol as p

from conftest import REGISTRY, REPO, ProxyProcess, free_port, wait_port

np = pytest.importorskip("numpy")

FIX = REPO / "tests" / "fixtures" / "tls"
CA = str(FIX / "ca.crt")
OTHER_CA = str(FIX / "other-ca.crt")
CLIENT = dict(client_cert=str(FIX / "client.crt"), client_key=str(FIX / "client.key"))
OTHER_CLIENT = dict(client_cert=str(FIX / "other-client.crt"), client_key=str(FIX / "other-client.key"))
USER = "user_features"
DL = 5.0  # GET deadline: generous, so a loaded machine never turns an answer DEGRADED


def row_of(i: int) -> list[float]:
    return [i * 16 + f + 0.25 for f in range(16)]  # exact in float32, distinct everywhere


def now_ms() -> int:
    return int(time.time() * 1000)


class TLSProxy:
    """A proxy with a TLS port (``tls_port``) beside its plaintext one (``port``)."""

    def __init__(self, binary, redis, cert: str = "server", client_ca: str | None = None, extra=()):
        self.tls_port = free_port()
        section = (
            f'\n[server.tls]\nlisten = "127.0.0.1:{self.tls_port}"\n'
            f'cert_file = "{FIX / (cert + ".crt")}"\nkey_file = "{FIX / (cert + ".key")}"\n'
        )
        if client_ca is not None:
            section += f'client_ca_file = "{FIX / client_ca}"\n'
        self.px = ProxyProcess(binary, redis, REGISTRY.read_text() + section, extra=extra)
        wait_port(self.tls_port, self.px.proc, "featureproxy's TLS port", log=self.px.log)
        self.port = self.px.port

    def client(self, **kw) -> featureproxy.Client:
        kw.setdefault("timeout", 5.0)
        return featureproxy.Client("127.0.0.1", self.tls_port, **kw)

    async def aclient(self, **kw) -> featureproxy.AsyncClient:
        kw.setdefault("timeout", 5.0)
        return await featureproxy.AsyncClient.connect("127.0.0.1", self.tls_port, **kw)

    def stop(self) -> None:
        self.px.stop()


@pytest.fixture(scope="module")
def tls_proxy(proxy_binary, redis_server):
    t = TLSProxy(proxy_binary, redis_server)
    yield t
    t.stop()


@pytest.fixture(scope="module")
def mtls_proxy(proxy_binary, redis_server):
    t = TLSProxy(proxy_binary, redis_server, client_ca="ca.crt")
    yield t
    t.stop()


@pytest.fixture(scope="module")
def expired_proxy(proxy_binary, redis_server):
    t = TLSProxy(proxy_binary, redis_server, cert="expired-server")
    yield t
    t.stop()


NATIVE = featureproxy.__impl__ == "native"


def on_native(aio: bool = False) -> bool:
    """True when the client under test runs on the native core (rustls): the sync client, when
    the native core is chosen. The asyncio client always runs on Python's ssl."""
    return NATIVE and not aio


def handshakes_ok(proxy: TLSProxy) -> float:
    return proxy.px.metric("featureproxy_tls_handshakes_total", result="ok")


def check_rows(batch, keys, rows: dict[str, int]) -> None:
    assert batch.keys == keys
    assert batch.statuses == [Status.FRESH] * len(keys)
    assert batch.matrix().tolist() == [row_of(rows[k]) for k in keys]


def tls_of(client: featureproxy.Client) -> ssl.SSLObject:
    conn = client._slots[0]
    assert conn is not None and conn.tls is not None
    return conn.tls.obj


def check_session(client: featureproxy.Client, server_hostname: str) -> None:
    """The client speaks TLS to the name ``server_hostname``: on the Python core, TLS 1.3 with
    ALPN featureproxy/1, read from its OpenSSL object; on the native core, the name its rustls
    configuration verifies (the version and ALPN it negotiates are read on the server's side in
    test_sync_channel_partial_records_and_close_notify)."""
    if client.impl == "native":
        assert client._core.tls_server_hostname == server_hostname
        return
    obj = tls_of(client)
    assert obj.version() == "TLSv1.3" and obj.selected_alpn_protocol() == "featureproxy/1"
    assert obj.server_hostname == server_hostname


@contextlib.contextmanager
def raises_tls(reason: str, match: str):
    """pytest.raises(TLSError, match=match), checking the error's reason too."""
    with pytest.raises(TLSError, match=match) as info:
        yield info
    assert info.value.reason == reason, info.value


# ---- reading and writing over TLS


def test_sync_get_and_put_round_trip_over_tls(tls_proxy, uniq):
    keys = [f"{uniq}s{i}" for i in range(300)]
    rows = {k: i for i, k in enumerate(keys)}
    # Written over plaintext, read over TLS: the same proxy, the same rows.
    with featureproxy.Client("127.0.0.1", tls_proxy.port, timeout=5) as plain:
        assert plain.put(USER, {k: (now_ms(), row_of(rows[k])) for k in keys[:150]}) == 150
    before = handshakes_ok(tls_proxy)
    with tls_proxy.client(ca_file=CA) as c:
        assert c.impl == featureproxy.__impl__
        check_session(c, "127.0.0.1")
        if c.impl == "native":  # every pooled connection (2) made its handshake at once
            assert handshakes_ok(tls_proxy) == before + 2
        assert c.server.startswith("featureproxy/") and 0 < c.ping() < 1.0
        check_rows(c.get(USER, keys[:150], deadline=DL, bypass_cache=True), keys[:150], rows)
        # A PUT over TLS of rows bigger than one TLS record (16 KiB), then a GET of all 300
        # (a ~21 KiB reply, several records).
        assert c.put(USER, {k: (now_ms(), row_of(rows[k])) for k in keys[150:]}) == 150
        check_rows(c.get(USER, keys, deadline=DL, bypass_cache=True), keys, rows)
        missing = c.get(USER, [f"{uniq}nobody"], deadline=DL)
        assert missing.statuses == [Status.MISSING] and missing.defaulted == [True]
    # server_hostname: verified against the certificate's DNS name instead of the IP.
    with tls_proxy.client(ca_file=CA, server_hostname="localhost") as c:
        check_session(c, "localhost")
        check_rows(c.get(USER, keys[150:152], deadline=DL), keys[150:152], rows)


def test_async_get_and_put_round_trip_over_tls(tls_proxy, uniq):
    keys = [f"{uniq}a{i}" for i in range(300)]
    rows = {k: i for i, k in enumerate(keys)}

    async def main():
        ac = await tls_proxy.aclient(ca_file=CA)
        try:
            obj = ac._proto.transport.get_extra_info("ssl_object")
            assert obj.version() == "TLSv1.3" and obj.selected_alpn_protocol() == "featureproxy/1"
            assert await ac.put(USER, {k: (now_ms(), row_of(rows[k])) for k in keys}) == 300
            check_rows(await ac.get(USER, keys, deadline=DL, bypass_cache=True), keys, rows)
            # Concurrent GETs on the one TLS connection, each answer checked.
            pairs = [[keys[i], keys[(i + 7) % 300]] for i in range(200)]
            batches = await asyncio.gather(*(ac.get(USER, pair, deadline=DL) for pair in pairs))
            for pair, b in zip(pairs, batches):
                check_rows(b, pair, rows)
        finally:
            await ac.close()

    asyncio.run(main())
    # Read back over plaintext: what the TLS client wrote is there.
    with featureproxy.Client("127.0.0.1", tls_proxy.port, timeout=5) as plain:
        check_rows(plain.get(USER, keys[:20], deadline=DL, bypass_cache=True), keys[:20], rows)


def test_threads_share_one_sync_tls_connection(tls_proxy, uniq):
    """The case the memory-BIO channel exists for: callers send while another thread reads."""
    n_keys, n_threads, n_calls = 300, 8, 200
    keys = [f"{uniq}t{i}" for i in range(n_keys)]
    rows = {k: i for i, k in enumerate(keys)}
    with tls_proxy.client(ca_file=CA, pool_size=1, timeout=10) as c:
        assert c.put(USER, {k: (now_ms(), row_of(rows[k])) for k in keys}) == n_keys
        conn = c._slots[0]
        before = handshakes_ok(tls_proxy)
        start = threading.Barrier(n_threads)
        failures: list[str] = []
        done = [0] * n_threads

        def worker(t: int) -> None:
            try:
                start.wait()
                for i in range(n_calls):
                    j = (t * n_calls + i * 13) % n_keys
                    # Mostly small GETs; every 25th reads all 300 keys (a multi-record reply).
                    want = keys if i % 25 == 0 else [keys[j], keys[(j + 1) % n_keys], keys[(j + 5) % n_keys]]
                    b = c.get(USER, want, deadline=DL)
                    if b.keys != want or b.statuses != [Status.FRESH] * len(want):
                        failures.append(f"thread {t} call {i}: {b.keys[:3]} {b.statuses[:3]}")
                    elif b.matrix().tolist() != [row_of(rows[k]) for k in want]:
                        failures.append(f"thread {t} call {i}: wrong rows for {want[:3]}")
                    done[t] += 1
            except Exception as e:  # noqa: BLE001 - reported below
                failures.append(f"thread {t}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not any(th.is_alive() for th in threads)
        assert failures == []
        assert done == [n_calls] * n_threads
        assert c._inflight() == 0
        # One connection throughout: no handshake since the threads started.
        assert handshakes_ok(tls_proxy) == before
        if c.impl == "python":
            assert c._slots[0] is conn and conn.alive


# ---- the server's certificate


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "async"])
def test_server_certificate_from_another_ca(tls_proxy, aio):
    with raises_tls("untrusted_server", r"not signed by a CA in ca_file='[^']*other-ca\.crt'") as info:
        connect(tls_proxy, aio, ca_file=OTHER_CA)
    msg = str(info.value)
    assert f"featureproxy 127.0.0.1:{tls_proxy.tls_port}: TLS" in msg
    assert "pass the CA that signed the proxy's certificate as ca_file=" in msg
    if on_native(aio):
        assert "(invalid peer certificate: UnknownIssuer)" in msg and info.value.__cause__ is None
    else:
        assert "unable to get local issuer certificate" in msg or "self-signed certificate in certificate chain" in msg
        assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)


def test_system_roots_do_not_trust_the_test_ca(tls_proxy):
    with raises_tls("untrusted_server", r"not signed by a CA in the system's trusted roots \(ca_file=None\)"):
        tls_proxy.client(tls=True)


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "async"])
def test_hostname_mismatch(tls_proxy, aio):
    with raises_tls("hostname_mismatch", r"hostname mismatch: verified against 'proxy\.example'"):
        connect(tls_proxy, aio, ca_file=CA, server_hostname="proxy.example")


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "async"])
def test_expired_server_certificate(expired_proxy, aio):
    if on_native(aio):
        detail = r"certificate expired at 2020-01-01 00:00:00 UTC, it is now 20\d\d-[^)]* UTC"
    else:
        detail = "certificate has expired"
    with raises_tls("expired", rf"the server's certificate expired \({detail}\): the proxy's cert_file must be renewed"):
        connect(expired_proxy, aio, ca_file=CA)


# ---- mutual TLS


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "async"])
def test_mtls_without_a_client_certificate(mtls_proxy, aio):
    # TLS 1.3: the server's refusal arrives after the client's handshake is done, with the reply
    # to HELLO, which the constructor waits for.
    with raises_tls(
        "client_cert_required",
        r"the server requires a client certificate signed by its CA: pass client_cert= and client_key=",
    ) as info:
        connect(mtls_proxy, aio, ca_file=CA)
    assert ("CertificateRequired" if on_native(aio) else "CERTIFICATE_REQUIRED") in str(info.value)


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "async"])
def test_mtls_with_a_certificate_from_another_ca(mtls_proxy, aio):
    with raises_tls("client_cert_refused", r"the server refused client_cert='[^']*other-client\.crt'") as info:
        connect(mtls_proxy, aio, ca_file=CA, **OTHER_CLIENT)
    assert ("UnknownCA" if on_native(aio) else "UNKNOWN_CA") in str(info.value)
    assert "client_ca_file" in str(info.value)


def test_mtls_with_the_client_certificate(mtls_proxy, uniq, tmp_path):
    keys = [f"{uniq}m{i}" for i in range(4)]
    rows = {k: i for i, k in enumerate(keys)}
    with mtls_proxy.client(ca_file=CA, **CLIENT) as c:
        assert c.impl == featureproxy.__impl__
        assert c.put(USER, {k: (now_ms(), row_of(rows[k])) for k in keys}) == 4
        check_rows(c.get(USER, keys, deadline=DL, bypass_cache=True), keys, rows)
    # The key in the certificate's own file (client_key=None), as OpenSSL's load_cert_chain takes it.
    both = tmp_path / "client-and-key.pem"
    both.write_bytes((FIX / "client.crt").read_bytes() + (FIX / "client.key").read_bytes())
    with mtls_proxy.client(ca_file=CA, client_cert=str(both)) as c:
        check_rows(c.get(USER, keys, deadline=DL), keys, rows)

    async def main():
        ac = await mtls_proxy.aclient(ca_file=CA, **CLIENT)
        try:
            check_rows(await ac.get(USER, keys, deadline=DL), keys, rows)
        finally:
            await ac.close()

    asyncio.run(main())


def test_a_ready_ssl_context_is_used_as_is(mtls_proxy, uniq):
    ctx = ssl.create_default_context(cafile=CA)
    ctx.load_cert_chain(CLIENT["client_cert"], CLIENT["client_key"])
    key = f"{uniq}ctx"
    with mtls_proxy.client(tls=ctx) as c:
        assert c.impl == "python"  # an SSLContext cannot be carried over to the native core
        assert tls_of(c).context is ctx
        c.put(USER, {key: (now_ms(), row_of(9))})
        check_rows(c.get(USER, [key], deadline=DL, bypass_cache=True), [key], {key: 9})

    async def main():
        ac = await mtls_proxy.aclient(tls=ctx)
        try:
            check_rows(await ac.get(USER, [key], deadline=DL), [key], {key: 9})
        finally:
            await ac.close()

    asyncio.run(main())


def test_tokens_over_tls(proxy_binary, redis_server):
    t = TLSProxy(proxy_binary, redis_server, extra=("--auth-token", "s3cret"))
    try:
        with pytest.raises(featureproxy.Unauthorized, match=f"127.0.0.1:{t.tls_port}"):
            t.client(ca_file=CA, token="wrong")
        with t.client(ca_file=CA, token="s3cret") as c:
            assert c.ping() > 0

        async def main():
            with pytest.raises(featureproxy.Unauthorized):
                await t.aclient(ca_file=CA)
            ac = await t.aclient(ca_file=CA, token="s3cret")
            assert await ac.ping() > 0
            await ac.close()

        asyncio.run(main())
    finally:
        t.stop()


def connect(proxy: TLSProxy, aio: bool, port: int | None = None, **kw) -> None:
    """Connects with either client to the TLS port, or ``port`` (and closes it, in case it
    connects)."""
    port = proxy.tls_port if port is None else port
    if aio:

        async def main():
            await (await featureproxy.AsyncClient.connect("127.0.0.1", port, timeout=5, **kw)).close()

        asyncio.run(main())
    else:
        featureproxy.Client("127.0.0.1", port, timeout=5, **kw).close()


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "async"])
def test_the_wrong_port_either_way(tls_proxy, aio):
    with raises_tls("not_tls", rf"does not speak TLS .*: is 127\.0\.0\.1:{tls_proxy.port} the proxy's TLS port"):
        connect(tls_proxy, aio, port=tls_proxy.port, ca_file=CA)
    # Plaintext to the TLS port: the proxy says so in an ERROR frame (Malformed from the sync
    # client, which decodes the HELLO reply itself; ConnectFailed quoting it from the async one).
    with pytest.raises(featureproxy.FeatureProxyError, match="this port requires TLS") as info:
        connect(tls_proxy, aio)
    assert not isinstance(info.value, TLSError)


# ---- the sync client's channel, against a scripted TLS server


class TricklingTLSServer:
    """A TLS server (OpenSSL over memory BIOs, as the client) that sends every record a few bytes
    per TCP write, answers GETs with one row per key (the key's length, first and last byte),
    and after answering the key ``bye`` sends close_notify and closes. ``sessions`` records, per
    handshake, the TLS version, the ALPN protocol chosen and the SNI name the client sent."""

    def __init__(self):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(FIX / "server.crt"), str(FIX / "server.key"))
        self.ctx.set_alpn_protocols(["featureproxy/1"])
        self.sni: list[str | None] = []
        self.ctx.sni_callback = lambda obj, name, ctx: self.sni.append(name)
        self.sessions: list[tuple[str | None, str | None]] = []
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.accepted = 0
        self.errors: list[BaseException] = []
        self.said_bye = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _send(self, conn, out: ssl.MemoryBIO, step: int = 3) -> None:
        data = out.read()
        for i in range(0, len(data), step):
            conn.sendall(data[i : i + step])

    def _serve(self, conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = self.ctx.wrap_bio(inc, out, server_side=True)
        asm = p.FrameAssembler()
        handshaking = True
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                inc.write(data)
                if handshaking:
                    try:
                        obj.do_handshake()
                        handshaking = False  # the client's HELLO may have come with its Finished
                        self.sessions.append((obj.version(), obj.selected_alpn_protocol()))
                    except ssl.SSLWantReadError:
                        continue
                    finally:
                        self._send(conn, out)
                plain = b""
                try:
                    while chunk := obj.read(65536):  # b"": the client's close_notify
                        plain += chunk
                except ssl.SSLWantReadError:
                    pass
                for frame in asm.feed(plain):
                    req = p.decode_request(frame)
                    rid = frame.request_id
                    if isinstance(req, p.Hello):
                        obj.write(p.encode_response(rid, p.HelloReply(1, 0, p.DEFAULT_MAX_FRAME, 64, "fake/1")))
                    elif isinstance(req, p.SchemaRequest):
                        feats = tuple(p.FeatureSpec(1, f"f{i}", b"\0" * 8) for i in range(3))
                        obj.write(p.encode_response(rid, p.SchemaReply(1, 0x99, 12, 1000, 2000, feats)))
                    else:
                        rows = b"".join(struct.pack("<3f", len(k), k[0], k[-1]) for k in req.keys)
                        n = len(req.keys)
                        obj.write(p.GetReply.build(1, 0x99, 12, bytes(n), [5] * n, rows, rid).data)
                        if req.keys == [b"bye"]:
                            try:
                                obj.unwrap()
                            except ssl.SSLWantReadError:
                                pass
                            self._send(conn, out)
                            conn.close()
                            self.said_bye.set()
                            return
                    self._send(conn, out)
        except BaseException as e:  # noqa: BLE001 - checked by the test
            self.errors.append(e)
        finally:
            conn.close()

    def close(self):
        self.lsock.close()


def test_sync_channel_partial_records_and_close_notify():
    """Either core's TLS (the Python core's memory-BIO channel, the native core's rustls) against
    records trickling in a few bytes per TCP write, and a close_notify after a reply."""
    srv = TricklingTLSServer()
    try:
        with featureproxy.Client(
            "127.0.0.1", srv.port, ca_file=CA, server_hostname="localhost", pool_size=1, timeout=5
        ) as c:
            assert c.impl == featureproxy.__impl__
            for key in ("a", "key-1", "zz" * 300):
                assert c.get("flat", [key]).row(0) == [len(key), ord(key[0]), ord(key[-1])]
            first = c._slots[0]
            # The reply, then close_notify and FIN: the reply is delivered; the next call, made
            # at once, is answered on a new connection. The Python core finds the connection
            # closed before sending on it. The native core may send first (it reads a connection
            # nobody waits on only during a call, and before sending only after 1 ms idle), then
            # sends the GET once more on a new connection, as no reply to it had begun.
            assert c.get("flat", ["bye"]).row(0) == [3, ord("b"), ord("e")]
            assert srv.said_bye.wait(5)
            assert c.get("flat", ["after"]).row(0) == [5, ord("a"), ord("r")]
            if c.impl == "python":
                assert not first.alive and first._dead_reason == "connection closed by the server"
                assert first.tls.closed  # by close_notify, not only by EOF
                assert c._slots[0] is not first
            assert srv.accepted == 2
        assert srv.errors == []
        # What each core negotiated, seen by the server: TLS 1.3, ALPN featureproxy/1, and the
        # name verified sent as SNI.
        assert srv.sessions == [("TLSv1.3", "featureproxy/1")] * 2
        assert srv.sni == ["localhost"] * 2
    finally:
        srv.close()


# ---- arguments, without a server


def test_tls_arguments():
    assert featureproxy.TLSError is TLSError and issubclass(TLSError, featureproxy.ConnectFailed)
    assert "TLSError" in featureproxy.__all__
    from featureproxy import _tls

    assert _tls.config(False, None, None, None, None, "h", "h:1") is None
    for kw in (dict(ca_file=CA), dict(server_hostname="localhost"), CLIENT, dict(tls=True)):
        args = dict(tls=False, ca_file=None, client_cert=None, client_key=None, server_hostname=None)
        args.update(kw)
        cfg = _tls.config(*args.values(), "h", "h:1")
        assert cfg is not None and cfg.context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert cfg.server_hostname == (kw.get("server_hostname") or "h")
    ctx = ssl.create_default_context()
    assert _tls.config(ctx, None, None, None, None, "h", "h:1").context is ctx
    with pytest.raises(ValueError, match="not both"):
        featureproxy.Client("127.0.0.1", 1, tls=ctx, ca_file=CA)
    with pytest.raises(ValueError, match="server-side"):
        featureproxy.Client("127.0.0.1", 1, tls=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    with pytest.raises(ValueError, match="client_key= was given without client_cert="):
        featureproxy.Client("127.0.0.1", 1, client_key=CLIENT["client_key"])
    with pytest.raises(TypeError, match="tls must be a bool or an ssl.SSLContext"):
        featureproxy.Client("127.0.0.1", 1, tls="yes")


def test_unloadable_files_raise_tls_error_from_the_constructor():
    with raises_tls("ca_file", r"cannot load ca_file='[^']*nope\.crt' \(No such file or directory\)"):
        featureproxy.Client("127.0.0.1", 1, ca_file=str(FIX / "nope.crt"))
    with raises_tls("client_cert", r"cannot load client_cert=.*KEY_VALUES_MISMATCH"):
        featureproxy.Client(
            "127.0.0.1", 1, ca_file=CA, client_cert=CLIENT["client_cert"], client_key=OTHER_CLIENT["client_key"]
        )

    async def main():
        await featureproxy.AsyncClient.connect("127.0.0.1", 1, ca_file=str(FIX / "nope.crt"))

    with raises_tls("ca_file", "cannot load ca_file="):
        asyncio.run(main())
