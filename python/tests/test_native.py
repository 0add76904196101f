"""The native core (featureproxy_native): the codec parity over protocol/vectors/, the error
mapping, and what the native client must do beyond the shared suite: fork, many threads on one
client, Ctrl-C, close() under a waiting call, the GIL released while it waits, and the reply's
buffer. Skipped where the native core is not installed; python/run-tests.sh installs it."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

import featureproxy
from featureproxy import protocol as p
from featureproxy.errors import ProtocolError

from conftest import VECTORS
from test_unit import FakeServer, reply_for
from test_vectors import ENTRIES, read_hex

native = pytest.importorskip("featureproxy_native")
np = pytest.importorskip("numpy")

USER = "user_features"


# ---- which core runs


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def test_impl_follows_featureproxy_impl():
    want = os.environ.get("FEATUREPROXY_IMPL", "auto") or "auto"
    assert featureproxy.__impl__ == ("python" if want == "python" else "native")
    for choice, expect in (("python", "python"), ("native", "native"), ("auto", "native"), ("", "native")):
        r = run_python("import featureproxy; print(featureproxy.__impl__)", FEATUREPROXY_IMPL=choice)
        assert r.returncode == 0 and r.stdout.strip() == expect, (choice, r.stderr)
    r = run_python("import featureproxy", FEATUREPROXY_IMPL="rust")
    assert r.returncode != 0 and "must be one of auto, python, native" in r.stderr


def test_forced_native_without_the_module_is_an_import_error(tmp_path):
    # A module of that name that fails to import stands for one that is not installed.
    (tmp_path / "featureproxy_native.py").write_text("raise ImportError('not built here')\n")
    env = dict(FEATUREPROXY_IMPL="native", PYTHONPATH=str(tmp_path))
    r = run_python("import featureproxy", **env)
    assert r.returncode != 0 and "pip install ./python/native" in r.stderr, r.stderr
    env["FEATUREPROXY_IMPL"] = "auto"
    r = run_python("import featureproxy; print(featureproxy.__impl__)", **env)
    assert r.returncode == 0 and r.stdout.strip() == "python", r.stderr


# ---- one codec: every vector through both


def python_outcome(e: dict, data: bytes):
    try:
        got = p.decode_frame(data, e["max_frame"])
    except ProtocolError as err:
        return ("error", err.code.name, err.request_id, "frame")
    if got is None:
        return ("incomplete",)
    frame, consumed = got
    try:
        if e["kind"] == "request":
            d = p.decode_request(frame, e["max_batch"])
            if isinstance(d, p.Hello):
                value = ("hello", d.version, d.token, d.client_name)
            elif isinstance(d, p.Ping):
                value = ("ping",)
            elif isinstance(d, p.SchemaRequest):
                value = ("schema", d.view)
            elif isinstance(d, p.GetRequest):
                value = ("get", d.view_id, d.get_flags, d.schema_id, d.deadline_us, tuple(d.keys))
            else:
                assert e["row_bytes"] is not None
                entries = tuple((x.key, x.computed_at_ms, x.row) for x in d.entries(e["row_bytes"]))
                value = ("put", d.view_id, d.schema_id, d.n, entries)
        else:
            d = p.decode_response(frame, e["max_batch"])
            if isinstance(d, p.HelloReply):
                value = ("hello", d.version, d.shard, d.max_frame, d.max_batch, d.server)
            elif isinstance(d, p.Pong):
                value = ("pong",)
            elif isinstance(d, p.SchemaReply):
                feats = [(f.dtype, f.name, f.default) for f in d.features]
                value = ("schema", d.view_id, d.schema_id, d.row_bytes, d.stale_after_ms, d.max_staleness_ms, feats)
            elif isinstance(d, p.GetReply):
                value = ("get", d.view_id, d.schema_id, d.n, d.row_bytes, d.statuses, d.ages, bytes(d.rows))
            elif isinstance(d, p.PutReply):
                value = ("put", d.written)
            else:
                value = ("error", d.code, d.message)
    except ProtocolError as err:
        return ("error", err.code.name, frame.request_id, "body")
    return ("ok", frame.op, frame.request_id, consumed, value)


def native_outcome(e: dict, data: bytes):
    try:
        got = native.decode_frame(data, e["max_frame"])
    except ProtocolError as err:
        return ("error", err.code.name, err.request_id, "frame")
    if got is None:
        return ("incomplete",)
    op, request_id, consumed = got
    whole = data[:consumed]
    try:
        if e["kind"] == "request":
            value = native.decode_request(whole, e["max_batch"], e["row_bytes"])
        else:
            value = native.decode_response(whole, e["max_batch"])
    except ProtocolError as err:
        return ("error", err.code.name, request_id, "body")
    return ("ok", op, request_id, consumed, value)


@pytest.mark.parametrize("e", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_every_vector_decodes_the_same_through_both_codecs(e):
    data = read_hex(VECTORS / e["file"])
    ours, theirs = python_outcome(e, data), native_outcome(e, data)
    if ours[0] == "ok" and theirs[0] == "ok":
        assert ours[:4] == theirs[:4]
        assert tuple(ours[4]) == tuple(theirs[4]), e["file"]
        # And both encode it back to the very bytes.
        assert native.reencode(e["kind"], data[: ours[3]]) == data[: ours[3]]
    else:
        assert ours == theirs, e["file"]
    # The vector's expectation, as test_vectors checks the Python codec against it.
    if e["expect"] not in ("ok", "incomplete"):
        assert theirs[0] == "error" and theirs[1] == e["expect"]


def test_native_get_encoding_matches_python():
    keys = ["a", b"\x00\xff", "é" * 10, b"k" * 1024]
    body = p.GetRequest(3, p.GET_BYPASS_CACHE, 0xABCD, 50_000, [k.encode() if isinstance(k, str) else k for k in keys])
    assert native.encode_get(7, 3, p.GET_BYPASS_CACHE, 0xABCD, 50_000, keys) == p.encode_request(7, body)
    with pytest.raises(featureproxy.InvalidRequest, match="1025 bytes; keys must be 1..1024 bytes"):
        native.encode_get(1, 1, 0, 1, 0, ["k" * 1025])
    with pytest.raises(featureproxy.InvalidRequest, match="a key must be str or bytes, not int: 5"):
        native.encode_get(1, 1, 0, 1, 0, [5])


# ---- the one mapping from Rust errors to the Python exceptions


def test_every_rust_error_maps_to_the_python_class_and_wording():
    addr = "127.0.0.1:7070"
    expect = [
        (featureproxy.ForbiddenError, f"featureproxy {addr}: FORBIDDEN: GET of view flat: not allowed for this principal (the token is valid"),
        (featureproxy.Overloaded, f"featureproxy {addr}: OVERLOADED: shed"),
        (featureproxy.RequestTimeout, f"featureproxy {addr}: no reply to GET 'flat' (5 keys) within 0.25s"),
        (featureproxy.ConnectFailed, f"featureproxy {addr}: cannot connect: Connection refused"),
        (featureproxy.ConnectionLost, f"featureproxy {addr}: the server closed the connection while waiting for GET 'flat' (5 keys)"),
        (featureproxy.ProtocolError, f"MALFORMED: featureproxy {addr}: reply to GET 'flat' (5 keys) is not protocol v1: GET reply is short"),
        (featureproxy.InvalidRequest, "GET 'flat' of 5 keys exceeds the server's max_batch of 4"),
        (featureproxy.InvalidRequest, "GET 'flat' of 5 keys would need a 104-byte reply, over the server's max_frame of 64: split the keys"),
        (featureproxy.InvalidRequest, "row 0: bad"),
        (
            featureproxy.TLSError,
            f"featureproxy {addr}: TLS: the server's certificate is not signed by a CA in the system's trusted "
            "roots (ca_file=None) (invalid peer certificate: UnknownIssuer): pass the CA that signed the proxy's "
            "certificate as ca_file=",
        ),
    ]
    for i, (cls, start) in enumerate(expect):
        with pytest.raises(featureproxy.FeatureProxyError) as info:
            native._raise_example(i, addr)
        assert type(info.value) is cls, (i, info.value)
        assert str(info.value).startswith(start), (i, str(info.value))
        if cls is featureproxy.TLSError:  # the Python core's reason tag for the case
            assert info.value.reason == "untrusted_server"
    with pytest.raises(IndexError):
        native._raise_example(len(expect), addr)
    # The classes keep their builtin bases, as on the Python core.
    assert issubclass(featureproxy.RequestTimeout, TimeoutError)
    assert issubclass(featureproxy.ConnectionLost, ConnectionError)


# ---- the native client


def native_client(port: int, **kw) -> featureproxy.Client:
    c = featureproxy.Client("127.0.0.1", port, **kw)
    if c.impl != "native":
        c.close()
        pytest.skip("the Python core runs (FEATUREPROXY_IMPL=python)")
    return c


def held_script(held: list, release: threading.Event):
    """Holds every GET's reply until ``release`` is set (then answers it)."""

    def script(conn, rid, req):
        held.append(rid)
        if release.wait(30):
            conn.sendall(reply_for(rid, req))

    return script


def test_reply_is_a_read_only_zero_copy_buffer(proxy, uniq):
    with native_client(proxy.port, timeout=5) as c:
        keys = [f"{uniq}z{i}" for i in range(10)]
        c.put(USER, {k: (int(time.time() * 1000), [float(i)] * 16) for i, k in enumerate(keys)})
        b = c.get(USER, keys, deadline=5.0)
        m = b.matrix()
        view = b.buffer
        assert view.readonly and view.nbytes == 10 * 64 and b.rows_offset == 0
        assert np.shares_memory(m, np.frombuffer(view, dtype=np.uint8))
        assert m.__array_interface__["data"][0] % 8 == 0
        with pytest.raises((BufferError, TypeError)):
            memoryview(b._reply).cast("B")[0:1] = b"x"
        assert b.row(3) == [3.0] * 16 and b.rows()[9] == [9.0] * 16
        assert [e.key for e in b] == keys and b.entity(-1).status == featureproxy.Status.FRESH


def test_many_threads_share_one_native_client(proxy, uniq):
    n_threads, n_calls = 32, 60
    keys = [f"{uniq}mt{i}" for i in range(50)]
    with native_client(proxy.port, timeout=10, pool_size=2) as c:
        c.put(USER, {k: (int(time.time() * 1000), [float(i)] * 16) for i, k in enumerate(keys)})
        start, failures = threading.Barrier(n_threads), []

        def worker(t):
            try:
                start.wait()
                for j in range(n_calls):
                    i = (t * 7 + j) % 50
                    want = [keys[i], keys[(i + 3) % 50]]
                    got = c.get(USER, want, deadline=5.0).matrix()
                    if got[:, 0].tolist() != [float(i), float((i + 3) % 50)]:
                        failures.append((t, j, got[:, 0].tolist()))
            except Exception as e:  # noqa: BLE001 - reported below
                failures.append((t, repr(e)))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not any(th.is_alive() for th in threads)
        assert failures == []
        assert c._inflight() == 0


def test_the_gil_is_released_while_a_call_waits():
    held, release = [], threading.Event()
    srv = FakeServer(held_script(held, release))
    try:
        with native_client(srv.port, pool_size=1, timeout=10) as c:
            c.schema("flat")
            out = {}
            t = threading.Thread(target=lambda: out.setdefault("b", c.get("flat", ["ab"])))
            t.start()
            while not held:
                time.sleep(0.001)
            # The caller is blocked in the native core; this thread runs Python meanwhile.
            spins, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 0.2:
                spins += 1
            release.set()
            t.join(10)
            assert out["b"].row(0) == [2, ord("a"), ord("b")]
            assert spins > 10_000
    finally:
        release.set()
        srv.close()


def test_ctrl_c_interrupts_a_blocked_call_within_a_slice():
    held, release, arrived = [], threading.Event(), threading.Event()
    hold = held_script(held, release)

    def script(conn, rid, req):
        arrived.set()
        hold(conn, rid, req)

    srv = FakeServer(script)
    try:
        with native_client(srv.port, pool_size=1, timeout=30) as c:
            c.schema("flat")
            sent = {}

            def ctrl_c():
                # Once the GET is at the server, the call is blocked in the native core: Ctrl-C
                # then, not at a fixed time that a loaded machine might reach before the call.
                if arrived.wait(10):
                    sent["at"] = time.monotonic()
                    os.kill(os.getpid(), signal.SIGINT)

            killer = threading.Thread(target=ctrl_c)
            killer.start()
            with pytest.raises(KeyboardInterrupt):
                c.get("flat", ["ab"])
            ended = time.monotonic()
            killer.join(5)
            assert held == [held[0]] and "at" in sent, (held, sent)
            took = ended - sent["at"]
            assert 0 <= took < native.SLICE_SECONDS + 1.0, took
            assert c._inflight() == 0
            # The connection carries on; the abandoned reply is dropped when it comes.
            release.set()
            assert c.get("flat", ["cd"]).row(0) == [2, ord("c"), ord("d")]
    finally:
        release.set()
        srv.close()


def test_close_ends_a_waiting_call_with_client_closed():
    held, release = [], threading.Event()
    srv = FakeServer(held_script(held, release))
    try:
        c = native_client(srv.port, pool_size=1, timeout=30)
        c.schema("flat")
        out = {}

        def call():
            try:
                c.get("flat", ["ab"])
            except Exception as e:  # noqa: BLE001 - checked below
                out["e"] = e

        t = threading.Thread(target=call)
        t.start()
        while not held:
            time.sleep(0.001)
        t0 = time.monotonic()
        c.close()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - t0 < 1.0
        assert isinstance(out["e"], featureproxy.ClientClosed), out
        assert "client closed while waiting for GET 'flat' (1 key)" in str(out["e"])
        with pytest.raises(featureproxy.ClientClosed):
            c.ping()
        assert c.closed
    finally:
        release.set()
        srv.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_after_fork_the_child_connects_anew_and_the_parent_keeps_its_connection():
    answered: dict[int, int] = {}
    lock = threading.Lock()

    def script(conn, rid, req):
        with lock:
            answered[conn.fileno()] = answered.get(conn.fileno(), 0) + 1
        conn.sendall(reply_for(rid, req))

    srv = FakeServer(script)
    try:
        with native_client(srv.port, pool_size=1, timeout=5) as c:
            assert c.get("flat", ["ab"]).row(0) == [2, ord("a"), ord("b")]
            assert len(srv.conns) == 1
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: its first call connects anew
                code = 1
                try:
                    ok = c.get("flat", ["xyz"]).row(0) == [3, ord("x"), ord("z")]
                    ok = ok and c.get("flat", ["q"]).row(0) == [1, ord("q"), ord("q")]
                    os.write(w, b"ok" if ok else b"bad")
                    code = 0
                finally:
                    os._exit(code)
            os.close(w)
            _, status = os.waitpid(pid, 0)
            assert os.read(r, 16) == b"ok" and os.waitstatus_to_exitcode(status) == 0
            os.close(r)
            assert len(srv.conns) == 2  # the child's own connection
            # The parent's connection is the one it had, untouched by the child.
            for key in ("p1", "p22", "p333"):
                assert c.get("flat", [key]).row(0) == [len(key), ord("p"), ord(key[-1])]
            assert len(srv.conns) == 2
    finally:
        srv.close()


def test_multiprocessing_fork_workers_share_nothing(proxy, uniq):
    """gunicorn --preload / multiprocessing: a client made before the workers fork."""
    import multiprocessing as mp

    keys = [f"{uniq}w{i}" for i in range(8)]
    with native_client(proxy.port, timeout=10) as c:
        c.put(USER, {k: (int(time.time() * 1000), [float(i)] * 16) for i, k in enumerate(keys)})
        assert c.get(USER, keys[:1], deadline=5.0).matrix()[0, 0] == 0.0
        _FORKED_CLIENT["c"] = c  # inherited by the workers, as a module-level client would be
        ctx = mp.get_context("fork")
        try:
            with ctx.Pool(4) as pool:
                got = pool.map(_first_value, [(USER, k) for k in keys])
        finally:
            _FORKED_CLIENT.clear()
        assert got == [float(i) for i in range(8)]
        assert c.get(USER, keys[-1:], deadline=5.0).matrix()[0, 0] == 7.0


_FORKED_CLIENT = {}


def _first_value(args):
    view, key = args
    c = _FORKED_CLIENT["c"]
    return float(c.get(view, [key], deadline=5.0).matrix()[0, 0])
