"""Client logic without the proxy: argument checks, row encoding, and request_id matching against
a scripted fake server that answers out of order, late, or with garbage."""

from __future__ import annotations

import datetime as dt
import socket
import struct
import sys
import threading
import types

import pytest

import featureproxy
from featureproxy import _common as c
from featureproxy import _overload, _retry
from featureproxy import protocol as p
from featureproxy.batch import Batch
from featureproxy.schema import DType, Feature, Schema

MIXED = Schema(
    "mixed",
    2,
    0x1234,
    8 + 4 + 8 + 4 + 1,
    30000,
    300000,
    [
        Feature("a", DType.I64, 0),
        Feature("b", DType.F32, 0.0),
        Feature("c", DType.F64, 42.5),
        Feature("d", DType.I32, 0),
        Feature("e", DType.BOOL, False),
    ],
)
FLAT = Schema("flat", 1, 0x99, 12, 1000, 2000, [Feature(f"f{i}", DType.F32, 0.0) for i in range(3)])


# ---- argument checks


def test_keys_checked_before_sending():
    assert c.key_bytes("ü") == "ü".encode()
    assert c.key_bytes(b"\x00\xff") == b"\x00\xff"
    assert c.key_bytes(b"k" * 1024) == b"k" * 1024
    with pytest.raises(featureproxy.InvalidRequest, match="1025 bytes"):
        c.key_bytes(b"k" * 1025)
    with pytest.raises(featureproxy.InvalidRequest, match="0 bytes"):
        c.key_bytes("")
    with pytest.raises(featureproxy.InvalidRequest, match="str or bytes"):
        c.key_bytes(17)
    with pytest.raises(featureproxy.InvalidRequest, match="single str"):
        c.keys_bytes("u1")
    assert isinstance(featureproxy.InvalidRequest("x"), ValueError)


def test_batch_and_frame_limits():
    c.check_get_limits(FLAT, [b"k"] * 4, p.DEFAULT_MAX_FRAME, 4)
    with pytest.raises(featureproxy.InvalidRequest, match="max_batch of 4"):
        c.check_get_limits(FLAT, [b"k"] * 5, p.DEFAULT_MAX_FRAME, 4)
    with pytest.raises(featureproxy.InvalidRequest, match="max_frame"):
        c.check_get_limits(FLAT, [b"k" * 1024] * 4096, p.DEFAULT_MAX_FRAME, 4096)
    with pytest.raises(featureproxy.InvalidRequest, match="reply"):
        c.check_get_limits(FLAT, [b"k"] * 100, 1000, 4096)


def test_deadline_to_microseconds():
    assert c.deadline_us(None) == 0
    assert c.deadline_us(0.002) == 2000
    assert c.deadline_us(1e-9) == 1
    for bad in (0, -1.0, float("nan"), True, "1"):
        with pytest.raises(featureproxy.InvalidRequest):
            c.deadline_us(bad)


def test_computed_at_forms():
    assert c.computed_at_ms(1_700_000_000_000) == 1_700_000_000_000
    assert c.computed_at_ms(1_700_000_000.25) == 1_700_000_000_250
    aware = dt.datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=dt.timezone.utc)
    assert c.computed_at_ms(aware) == 1_700_000_000_500
    plus2 = aware.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert c.computed_at_ms(plus2) == 1_700_000_000_500
    with pytest.raises(featureproxy.InvalidRequest, match="naive"):
        c.computed_at_ms(dt.datetime(2023, 1, 1))
    for bad in (True, "now", float("inf"), -5):
        with pytest.raises(featureproxy.InvalidRequest):
            c.computed_at_ms(bad)


def test_encode_row_forms():
    want = struct.pack("<qfdi?", 7, 1.5, 2.25, -3, True)
    assert MIXED.encode_row([7, 1.5, 2.25, -3, True]) == want
    assert MIXED.encode_row({"e": True, "d": -3, "c": 2.25, "b": 1.5, "a": 7}) == want
    np = pytest.importorskip("numpy")
    rec = np.array([(7, 1.5, 2.25, -3, True)], dtype=MIXED.numpy_dtype)[0]
    assert MIXED.encode_row(rec) == want
    assert FLAT.encode_row(np.array([1, 2, 3], dtype=np.float32)) == struct.pack("<3f", 1, 2, 3)
    with pytest.raises(featureproxy.InvalidRequest, match="missing e"):
        MIXED.encode_row({"a": 1, "b": 1, "c": 1, "d": 1})
    with pytest.raises(featureproxy.InvalidRequest, match="unknown zz"):
        MIXED.encode_row({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "zz": 2})
    with pytest.raises(featureproxy.InvalidRequest, match="4 values"):
        MIXED.encode_row([1, 2, 3, 4])
    with pytest.raises(featureproxy.InvalidRequest, match="feature d .i32. cannot hold 4294967296"):
        MIXED.encode_row([1, 2, 3, 2**32, True])
    with pytest.raises(featureproxy.InvalidRequest, match="feature a .i64."):
        MIXED.encode_row([1.5, 2, 3, 4, True])


def mixed_batch(n: int) -> Batch:
    rows = b"".join(MIXED.encode_row([i, i + 0.5, i * 2.0, -i, i % 2 == 0]) for i in range(n))
    reply = p.GetReply.build(2, 0x1234, MIXED.row_bytes, bytes([0] * n), list(range(n)), rows)
    return Batch(MIXED, [f"k{i}" for i in range(n)], reply)


def test_plain_python_without_numpy(monkeypatch):
    monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy now fails
    monkeypatch.setattr("featureproxy.batch._np", None)  # as in a process that never imported it
    b = mixed_batch(3)
    assert b.to_dicts()[1] == {"a": 1, "b": 1.5, "c": 2.0, "d": -1, "e": False}
    assert b.row(2) == [2, 2.5, 4.0, -2, True]
    assert b.rows()[0] == [0, 0.5, 0.0, 0, True]
    with pytest.raises(ImportError):
        b.matrix()


def test_structured_matrix_views_reply():
    np = pytest.importorskip("numpy")
    b = mixed_batch(4)
    m = b.matrix()
    assert m.shape == (4,) and m.dtype.names == ("a", "b", "c", "d", "e")
    assert m.dtype.itemsize == MIXED.row_bytes and not m.flags.writeable
    assert list(m["a"]) == [0, 1, 2, 3] and list(m["e"]) == [True, False, True, False]
    assert np.shares_memory(m, np.frombuffer(b.buffer, dtype=np.uint8))
    w = b.matrix(copy=True)
    assert w.flags.writeable and not np.shares_memory(w, np.frombuffer(b.buffer, dtype=np.uint8))


def test_empty_batch_matrix():
    pytest.importorskip("numpy")
    reply = p.GetReply.build(1, 0x99, 12, b"", [], b"")
    b = Batch(FLAT, [], reply)
    assert len(b) == 0 and b.matrix().shape == (0, 3) and b.to_dicts() == [] and b.statuses == []



# ---- the schema retry policy (_retry), fed scripted outcomes: no I/O


FLAT_NEW = Schema("flat", 1, 0x77, 12, 1000, 2000, [Feature(f"f{i}", DType.F32, 0.0) for i in range(3)])


def limits(**kw):
    """A stand-in for the client, as a plan reads it."""
    return types.SimpleNamespace(**{"address": "fake:1", "timeout": 1.0, "max_frame": 1 << 20, "max_batch": 64, **kw})


def flat_reply(schema: Schema, n: int = 1) -> p.GetReply:
    return p.GetReply.build(schema.view_id, schema.schema_id, schema.row_bytes, bytes(n), [5] * n, bytes(12 * n))


def get_body(schema: Schema, keys, deadline_us: int = 0, flags: int = 0) -> bytes:
    return p.GetRequest(schema.view_id, flags, schema.schema_id, deadline_us, keys).encode_body()


def get_plan(cached: bool, client=None, keys=("k",), deadline=None, bypass_cache=False, overload=None) -> _retry.Plan:
    plan = _retry.Plan(
        _retry.get(client or limits(), "flat", list(keys), deadline, bypass_cache, cached=cached, overload=overload)
    )
    assert plan.step == _retry.FetchSchema("flat", refresh=False)
    plan.send(FLAT)
    return plan


def put_plan(cached: bool) -> _retry.Plan:
    plan = _retry.Plan(_retry.put(limits(), "flat", {"k": (1_700_000_000_000, [1.0, 2.0, 3.0])}, cached=cached))
    assert plan.step == _retry.FetchSchema("flat", refresh=False)
    plan.send(FLAT)
    return plan


def put_body(schema: Schema) -> bytes:
    entry = p.PutEntry(b"k", 1_700_000_000_000, schema.encode_row([1.0, 2.0, 3.0]))
    return p.PutRequest.new(schema.view_id, schema.schema_id, [entry]).encode_body()


def mismatch() -> Exception:
    return featureproxy.errors.server_error(featureproxy.ErrorCode.SCHEMA_MISMATCH, "stale", "fake:1")


def unknown_view() -> Exception:
    return featureproxy.errors.server_error(featureproxy.ErrorCode.UNKNOWN_VIEW, "no such view", "fake:1")


BOTH_OPS = pytest.mark.parametrize("start", [get_plan, put_plan], ids=["get", "put"])


def test_retry_get_first_try():
    plan = get_plan(cached=True, keys=["a", "b"], deadline=0.002, bypass_cache=True)
    want = get_body(FLAT, [b"a", b"b"], 2000, p.GET_BYPASS_CACHE)
    assert plan.step == _retry.Call(p.OP_GET, want, "GET 'flat' (2 keys)", 1.0)
    reply = flat_reply(FLAT, 2)
    plan.send(reply)
    assert plan.done and plan.step is None
    assert isinstance(plan.result, Batch) and plan.result.schema is FLAT and plan.result.keys == ["a", "b"]


def test_retry_get_waits_for_the_longer_of_timeout_and_deadline():
    assert get_plan(True, deadline=5).step.timeout == 5.0
    assert get_plan(True, deadline=0.5).step.timeout == 1.0
    assert get_plan(True, client=limits(timeout=2.5)).step.timeout == 2.5


@BOTH_OPS
@pytest.mark.parametrize("cached", [False, True])
def test_retry_refetches_exactly_once_on_schema_mismatch(start, cached):
    plan = start(cached=cached)
    plan.throw(mismatch())
    assert plan.step == _retry.FetchSchema("flat", refresh=True)
    plan.send(FLAT_NEW)
    assert isinstance(plan.step, _retry.Call)
    second = mismatch()
    with pytest.raises(featureproxy.SchemaMismatch) as ei:
        plan.throw(second)
    assert ei.value is second  # the server's error, not a wrapper


def test_retry_get_succeeds_after_the_refetch():
    plan = get_plan(cached=True)
    plan.throw(mismatch())
    plan.send(FLAT_NEW)
    assert plan.step == _retry.Call(p.OP_GET, get_body(FLAT_NEW, [b"k"]), "GET 'flat' (1 key)", 1.0)
    plan.send(flat_reply(FLAT_NEW))
    assert plan.done and plan.result.schema is FLAT_NEW


def test_retry_put_reencodes_after_the_refetch():
    plan = put_plan(cached=False)
    assert plan.step == _retry.Call(p.OP_PUT, put_body(FLAT), "PUT 'flat' (1 row)", None)
    plan.throw(mismatch())
    plan.send(FLAT_NEW)
    assert plan.step == _retry.Call(p.OP_PUT, put_body(FLAT_NEW), "PUT 'flat' (1 row)", None)
    plan.send(p.PutReply(1))
    assert plan.done and plan.result == 1


@BOTH_OPS
def test_retry_unknown_view_refetches_only_a_cached_schema(start):
    with pytest.raises(featureproxy.UnknownView):
        start(cached=False).throw(unknown_view())
    plan = start(cached=True)
    plan.throw(unknown_view())
    assert plan.step == _retry.FetchSchema("flat", refresh=True)
    plan.send(FLAT_NEW)
    with pytest.raises(featureproxy.UnknownView):
        plan.throw(unknown_view())


@BOTH_OPS
def test_retry_other_errors_are_not_retried(start):
    for error in (
        featureproxy.RequestTimeout("fake:1: no reply"),
        featureproxy.errors.server_error(featureproxy.ErrorCode.OVERLOADED, "busy", "fake:1"),
    ):
        plan = start(cached=True)
        with pytest.raises(type(error)) as ei:
            plan.throw(error)
        assert ei.value is error


def test_retry_get_reply_of_another_schema_refetches_once():
    plan = get_plan(cached=False)
    plan.send(flat_reply(FLAT_NEW))  # laid out for a schema the client does not have
    assert plan.step == _retry.FetchSchema("flat", refresh=True)
    plan.send(FLAT_NEW)
    assert plan.step.body == get_body(FLAT_NEW, [b"k"])
    with pytest.raises(featureproxy.ProtocolError, match="^MALFORMED: featureproxy fake:1: GET 'flat' reply does not"):
        plan.send(flat_reply(FLAT))


def test_retry_get_reply_with_wrong_count_is_not_retried():
    plan = get_plan(cached=True)
    with pytest.raises(featureproxy.ProtocolError, match="1 keys was answered with 2 entities"):
        plan.send(flat_reply(FLAT, 2))


def test_retry_error_while_refetching_propagates_chained_to_the_mismatch():
    plan = get_plan(cached=True)
    first = mismatch()
    plan.throw(first)
    lost = featureproxy.ConnectionLost("fake:1: gone")
    with pytest.raises(featureproxy.ConnectionLost) as ei:
        plan.throw(lost)
    assert ei.value is lost and lost.__context__ is first


def test_retry_arguments_checked_before_any_step():
    with pytest.raises(featureproxy.InvalidRequest, match="single str"):
        _retry.Plan(_retry.get(limits(), "flat", "k", None, False, cached=False))
    with pytest.raises(featureproxy.InvalidRequest, match="deadline"):
        _retry.Plan(_retry.get(limits(), "flat", ["k"], -1, False, cached=False))
    with pytest.raises(featureproxy.InvalidRequest, match="put rows"):
        _retry.Plan(_retry.put(limits(), "flat", [1], cached=False))


def test_retry_limits_read_again_after_the_refetch():
    client = limits(max_batch=2)
    plan = get_plan(cached=True, client=client, keys=["a", "b"])
    plan.throw(mismatch())
    client.max_batch = 1  # the refetch reconnected to a server with a smaller batch limit
    with pytest.raises(featureproxy.InvalidRequest, match="max_batch of 1"):
        plan.send(FLAT_NEW)


# ---- the overload retry (_overload) and its retry budget, on a clock the tests move


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def overloaded() -> Exception:
    return featureproxy.errors.server_error(featureproxy.ErrorCode.OVERLOADED, "shed", "fake:1")


def spend_all(b: _overload.RetryBudget, now: float) -> int:
    n = 0
    while b.try_spend(now):
        n += 1
        assert n < 1_000_000, "the budget never ran out"
    return n


def test_budget_a_quiet_client_may_retry_the_floor_each_window():
    b = _overload.RetryBudget(0.0)
    assert spend_all(b, 0.0) == _overload.MIN_RETRIES == 10
    assert spend_all(b, 0.999) == 0  # the withdrawals are still in the window
    assert spend_all(b, 1.0) == 10  # a second later they have expired


def test_budget_each_get_sent_earns_a_tenth_of_a_retry():
    b = _overload.RetryBudget(0.0)
    for _ in range(95):
        b.deposit(0.0)
    assert spend_all(b, 0.0) == 19  # 9.5 tokens earned: 9 whole ones, plus the floor's 10
    for _ in range(4):
        b.deposit(0.001)
    assert not b.try_spend(0.001)
    b.deposit(0.001)  # the 100th GET completes the tenth token
    assert b.try_spend(0.001) and not b.try_spend(0.001)


def test_budget_deposits_expire_with_their_slice():
    b = _overload.RetryBudget(0.0)
    for t in (0.0, 0.5):
        for _ in range(100):
            b.deposit(t)
    assert spend_all(b, 0.95) == 30  # both slices count: 20 + 10
    assert spend_all(b, 1.05) == 0  # the first slice expired: 10 + 10 - 30 < 1
    assert spend_all(b, 1.95) == 10  # the retries of 0.95 s expired too: the floor is left
    assert spend_all(b, 3600.05) == 10  # a long idle clears everything
    # A clock read before the newest slice (another thread's) counts in it: a token.
    for _ in range(10):
        b.deposit(3599.55)
    assert spend_all(b, 3600.05) == 1


def test_budget_a_flood_retries_a_tenth_plus_the_floor():
    """100 GETs every 10 ms for 10 s, each wanting a retry: 1,010 retries in each second."""
    b = _overload.RetryBudget(0.0)
    per_window = [0] * 10
    for tick in range(1000):
        now = tick * 0.01 + 0.001  # never on a slice's boundary
        for _ in range(100):
            b.deposit(now)
            if b.try_spend(now):
                per_window[tick // 100] += 1
    assert all(990 <= r <= 1010 for r in per_window), per_window
    assert sum(per_window) <= 10 * 1010


def test_overload_pause_is_jittered_within_the_backoff_and_the_deadline():
    draws = iter([0.0, 0.5, 0.999999, 0.5])
    o = _overload.OverloadRetry(0.02, clock=Clock(), random=lambda: next(draws))
    assert o.pause(0.0, 1.0) == pytest.approx(0.010)
    assert o.pause(0.0, 1.0) == pytest.approx(0.015)
    assert 0.019 < o.pause(0.0, 1.0) <= 0.02
    assert o.pause(0.0, 0.015) is None  # would end at the deadline: not retried, not refused
    assert (o.retries, o.refused) == (3, 0)
    with pytest.raises(ValueError, match="overload_backoff"):
        _overload.OverloadRetry(-1)


def test_overload_plan_retries_a_shed_get_once_within_the_timeout():
    clock = Clock()
    o = _overload.OverloadRetry(0.02, clock=clock, random=lambda: 0.5)
    plan = get_plan(cached=True, overload=o)
    first = plan.step
    assert first == _retry.Call(p.OP_GET, get_body(FLAT, [b"k"]), "GET 'flat' (1 key)", 1.0)
    clock.t += 0.1  # the shed answer took 100 ms
    plan.throw(overloaded())
    assert plan.step == _retry.Pause(pytest.approx(0.015))
    clock.t += 0.015
    plan.send(None)
    # The same GET, waiting only for what is left of the 1 s timeout.
    assert plan.step.body == first.body and plan.step.timeout == pytest.approx(1.0 - 0.115)
    shed_again = overloaded()
    with pytest.raises(featureproxy.Overloaded) as ei:
        plan.throw(shed_again)
    assert ei.value is shed_again
    assert (o.retries, o.refused) == (1, 0)

    # Answered on the retry: the rows.
    plan = get_plan(cached=True, overload=o)
    plan.throw(overloaded())
    plan.send(None)
    plan.send(flat_reply(FLAT))
    assert plan.done and isinstance(plan.result, Batch)
    assert (o.retries, o.refused) == (2, 0)


def test_overload_plan_no_retry_when_the_pause_passes_the_timeout():
    o = _overload.OverloadRetry(0.02, clock=Clock(), random=lambda: 0.0)
    plan = get_plan(cached=True, client=limits(timeout=0.01), overload=o)
    with pytest.raises(featureproxy.Overloaded):
        plan.throw(overloaded())  # a 10 ms pause would end at the 10 ms timeout
    assert (o.retries, o.refused) == (0, 0)


def test_overload_plan_budget_refuses_past_its_tokens():
    """30 GETs in one second, each shed: 10 + 30/10 retries, the rest refused."""
    o = _overload.OverloadRetry(0.0, clock=Clock(), random=lambda: 0.0)
    outcomes = []
    for _ in range(30):
        plan = get_plan(cached=True, overload=o)
        try:
            plan.throw(overloaded())
        except featureproxy.Overloaded:
            outcomes.append("refused")
        else:
            assert isinstance(plan.step, _retry.Pause)
            outcomes.append("retried")
    # After GET k, k/10 + 10 tokens were earned: retries at GETs 1-11, 20 and 30.
    retried = [i + 1 for i, x in enumerate(outcomes) if x == "retried"]
    assert retried == list(range(1, 12)) + [20, 30]
    assert (o.retries, o.refused) == (13, 17)


def test_overload_plan_schema_refetch_and_shed_retry_each_happen_once():
    o = _overload.OverloadRetry(0.02, clock=Clock(), random=lambda: 0.0)
    plan = get_plan(cached=True, overload=o)
    plan.throw(mismatch())
    plan.send(FLAT_NEW)
    plan.throw(overloaded())
    assert plan.step == _retry.Pause(pytest.approx(0.01))
    plan.send(None)
    assert plan.step.body == get_body(FLAT_NEW, [b"k"])
    with pytest.raises(featureproxy.SchemaMismatch):
        plan.throw(mismatch())  # the refetch was spent
    assert o.retries == 1

# ---- fake server


class FakeServer:
    """Accepts connections and hands each decoded request to ``script(conn, rid, req)``."""

    def __init__(self, script):
        self.script = script
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.lsock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        asm = p.FrameAssembler()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                for frame in asm.feed(data):
                    req = p.decode_request(frame)
                    if isinstance(req, p.Hello):
                        conn.sendall(
                            p.encode_response(frame.request_id, p.HelloReply(1, 0, p.DEFAULT_MAX_FRAME, 64, "fake/1"))
                        )
                    elif isinstance(req, p.SchemaRequest):
                        conn.sendall(p.encode_response(frame.request_id, schema_reply()))
                    else:
                        self.script(conn, frame.request_id, req)
        except OSError:
            return

    def close(self):
        self.lsock.close()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


def schema_reply() -> p.SchemaReply:
    feats = tuple(p.FeatureSpec(1, f"f{i}", b"\0" * 8) for i in range(3))
    return p.SchemaReply(1, 0x99, 12, 1000, 2000, feats)


def reply_for(rid: int, req: p.GetRequest) -> bytes:
    """Each key's row is (len(key), first byte, last byte): unique per key in the tests."""
    rows = b"".join(struct.pack("<3f", len(k), k[0], k[-1]) for k in req.keys)
    n = len(req.keys)
    return p.GetReply.build(1, 0x99, 12, bytes(n), [5] * n, rows, rid).data


@pytest.fixture
def fake():
    servers = []

    def make(script):
        s = FakeServer(script)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def test_replies_out_of_order_reach_their_callers(fake):
    """20 threads on one connection; the server answers each group of 20 in reverse order."""
    lock, held = threading.Lock(), []

    def script(conn, rid, req):
        with lock:
            held.append((rid, req))
            if len(held) < 20:
                return
            batch = held[:]
            held.clear()
        for rid2, req2 in reversed(batch):
            conn.sendall(reply_for(rid2, req2))

    srv = fake(script)
    with featureproxy.Client("127.0.0.1", srv.port, pool_size=1, timeout=5) as cl:
        results, errors = {}, []

        def worker(i):
            try:
                key = f"key-{i:02d}-{chr(65 + i)}"
                results[i] = (key, cl.get("flat", [key]).row(0))
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for i, (key, row) in results.items():
            assert row == [len(key), ord(key[0]), ord(key[-1])]
        assert cl._inflight() == 0


def test_timeout_removes_waiter_and_late_reply_is_dropped(fake):
    first: dict = {}

    def script(conn, rid, req):
        if not first:
            first["rid"], first["req"] = rid, req  # hold the first GET's reply back
            return
        # Answer the first one (late, its caller is gone) before the current one.
        conn.sendall(reply_for(first["rid"], first["req"]) + reply_for(rid, req))

    srv = fake(script)
    with featureproxy.Client("127.0.0.1", srv.port, pool_size=1, timeout=0.2) as cl:
        cl.schema("flat")
        with pytest.raises(featureproxy.RequestTimeout, match=f"127.0.0.1:{srv.port}.*GET 'flat'"):
            cl.get("flat", ["slow-key"])
        assert cl._inflight() == 0
        row = cl.get("flat", ["zq"]).row(0)
        assert row == [2, ord("z"), ord("q")]


def test_malformed_reply_breaks_connection_then_reconnects(fake):
    calls = []

    def script(conn, rid, req):
        calls.append(rid)
        if len(calls) == 1:
            conn.sendall(p.encode_frame(0x90, rid, b"\0" * 7))  # far too short for a GET reply
        else:
            conn.sendall(reply_for(rid, req))

    srv = fake(script)
    with featureproxy.Client("127.0.0.1", srv.port, pool_size=1, timeout=2) as cl:
        with pytest.raises(featureproxy.ProtocolError, match="not protocol v1"):
            cl.get("flat", ["a"])
        assert cl.get("flat", ["abc"]).row(0) == [3, ord("a"), ord("c")]
        assert len(srv.conns) == 2


def test_server_errors_map_to_classes(fake):
    codes = iter(range(1, 15))

    def script(conn, rid, req):
        conn.sendall(p.encode_response(rid, p.ErrorReply(next(codes), "scripted")))

    srv = fake(script)
    names = [
        "Malformed",
        "FrameTooLarge",
        "UnknownOp",
        "UnknownView",
        "SchemaMismatch",
        "BatchTooLarge",
        "BadRow",
        "Overloaded",
        "Unauthorized",
        "UnsupportedVersion",
        "BackendUnavailable",
        "ServerTimeout",
        "Internal",
        "ForbiddenError",
    ]
    with featureproxy.Client("127.0.0.1", srv.port, pool_size=1, timeout=2) as cl:
        for code, name in enumerate(names, start=1):
            with pytest.raises(featureproxy.ServerError) as ei:
                cl.ping()
            assert type(ei.value).__name__ == name and ei.value.code == code
            assert "scripted" in str(ei.value) and f"127.0.0.1:{srv.port}" in str(ei.value)
            assert isinstance(ei.value, featureproxy.FeatureProxyError)


FORBIDDEN_GET = "GET of view flat: not allowed for this principal"


def forbidding_script(counts: dict):
    """GETs whose first key is b"forbidden", and every PUT, are answered FORBIDDEN (14), as the
    proxy answers a principal without the grant; other GETs get their rows, PINGs a PONG."""

    def script(conn, rid, req):
        if isinstance(req, p.Ping):
            conn.sendall(p.encode_response(rid, p.Pong()))
            return
        op = "put" if isinstance(req, p.PutRequest) else "get"
        counts[op] = counts.get(op, 0) + 1
        if op == "put":
            conn.sendall(p.encode_response(rid, p.ErrorReply(14, "PUT of view flat: not allowed for this principal")))
        elif req.keys[0] == b"forbidden":
            conn.sendall(p.encode_response(rid, p.ErrorReply(14, FORBIDDEN_GET)))
        else:
            conn.sendall(reply_for(rid, req))

    return script


def check_forbidden(e: featureproxy.ForbiddenError, port: int, message: str = FORBIDDEN_GET) -> None:
    assert e.code == featureproxy.ErrorCode.FORBIDDEN == 14 and e.message == message
    assert isinstance(e, featureproxy.ServerError) and not e.code.closes_connection
    text = str(e)
    assert text.startswith(f"featureproxy 127.0.0.1:{port}: FORBIDDEN: {message}"), text
    assert "its principal may not do this" in text and "access file" in text, text


def test_forbidden_raises_and_the_connection_stays_usable(fake):
    counts: dict = {}
    srv = fake(forbidding_script(counts))
    with featureproxy.Client("127.0.0.1", srv.port, pool_size=1, timeout=2) as cl:
        assert cl.get("flat", ["ab"]).row(0) == [2, ord("a"), ord("b")]
        with pytest.raises(featureproxy.ForbiddenError) as ei:
            cl.get("flat", ["forbidden", "x"])
        check_forbidden(ei.value, srv.port)
        assert counts["get"] == 2  # not retried
        # The same connection serves the next calls.
        assert cl.get("flat", ["xyz"]).row(0) == [3, ord("x"), ord("z")]
        with pytest.raises(featureproxy.ForbiddenError) as ei:
            cl.put("flat", {"forbidden": (1, [1.0, 2.0, 3.0])})
        check_forbidden(ei.value, srv.port, "PUT of view flat: not allowed for this principal")
        assert counts["put"] == 1
        cl.ping()
        assert cl.get("flat", ["q"]).row(0) == [1, ord("q"), ord("q")]
        assert len(srv.conns) == 1


def test_async_forbidden_raises_and_the_connection_stays_usable(fake):
    import asyncio

    counts: dict = {}
    srv = fake(forbidding_script(counts))

    async def main():
        async with await featureproxy.AsyncClient.connect("127.0.0.1", srv.port, timeout=2) as ac:
            # One request refused among others in flight on the same connection.
            results = await asyncio.gather(
                ac.get("flat", ["ab"]), ac.get("flat", ["forbidden"]), ac.get("flat", ["cd"]), return_exceptions=True
            )
            assert results[0].row(0) == [2, ord("a"), ord("b")]
            assert isinstance(results[1], featureproxy.ForbiddenError)
            check_forbidden(results[1], srv.port)
            assert results[2].row(0) == [2, ord("c"), ord("d")]
            with pytest.raises(featureproxy.ForbiddenError):
                await ac.put("flat", {"forbidden": (1, [1.0, 2.0, 3.0])})
            assert (await ac.get("flat", ["xyz"])).row(0) == [3, ord("x"), ord("z")]
            assert counts == {"get": 4, "put": 1}
        assert len(srv.conns) == 1

    asyncio.run(main())


def test_an_unknown_error_code_keeps_its_number():
    e = featureproxy.errors.server_error(15, "from a newer server", "fake:1")
    assert type(e) is featureproxy.ServerError and e.code == 15 and e.message == "from a newer server"
    assert str(e) == "featureproxy fake:1: error code 15: from a newer server"
    assert featureproxy.ServerError(0, "zero").code == 0
    assert type(featureproxy.errors.server_error(14, "m")) is featureproxy.ForbiddenError


def test_an_unknown_error_code_on_the_wire_is_malformed_then_reconnects(fake):
    """A code past those v1 defines breaks the connection (SPEC.md 6.4) with a clear error, not a crash."""
    calls = []

    def script(conn, rid, req):
        calls.append(rid)
        if len(calls) == 1:
            conn.sendall(p.encode_frame(p.OP_ERROR, rid, struct.pack("<HH", 15, 4) + b"new!"))
        else:
            conn.sendall(reply_for(rid, req))

    srv = fake(script)
    with featureproxy.Client("127.0.0.1", srv.port, pool_size=1, timeout=2) as cl:
        # Worded by the codec that decoded it (Python's or, on the native core, Rust's): both
        # name the code, v1's range and what the server said.
        with pytest.raises(featureproxy.ProtocolError, match=r"ERROR (reply with )?code 15\b.*1\.\.=14.*new!") as ei:
            cl.get("flat", ["a"])
        assert ei.value.code == featureproxy.ErrorCode.MALFORMED
        assert cl.get("flat", ["abc"]).row(0) == [3, ord("a"), ord("c")]
        assert len(srv.conns) == 2


def test_connect_refused_names_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(featureproxy.ConnectFailed, match=f"featureproxy 127.0.0.1:{port}: cannot connect"):
            featureproxy.Client("127.0.0.1", port, timeout=1)
    assert issubclass(featureproxy.ConnectFailed, ConnectionError)


def test_async_out_of_order(fake):
    import asyncio

    lock, held = threading.Lock(), []

    def script(conn, rid, req):
        with lock:
            held.append((rid, req))
            if len(held) < 50:
                return
            batch = held[:]
            held.clear()
        for rid2, req2 in reversed(batch):
            conn.sendall(reply_for(rid2, req2))

    srv = fake(script)

    async def main():
        async with await featureproxy.AsyncClient.connect("127.0.0.1", srv.port, timeout=5) as ac:
            keys = [f"k{i:03d}{chr(97 + i % 26)}" for i in range(50)]
            batches = await asyncio.gather(*(ac.get("flat", [k]) for k in keys))
            for k, b in zip(keys, batches):
                assert b.row(0) == [len(k), ord(k[0]), ord(k[-1])]
            assert ac._inflight() == 0

    asyncio.run(main())


def test_send_stalled_by_a_server_that_stops_reading():
    """A server that stops reading: the send fails after the timeout instead of blocking forever."""
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    release = threading.Event()

    def serve():
        conn, _ = lsock.accept()
        asm = p.FrameAssembler()
        frames = []
        while not frames:
            frames = asm.feed(conn.recv(65536))
        hello = p.HelloReply(1, 0, 64 * 1024 * 1024, 100_000, "fake/1")
        conn.sendall(p.encode_response(frames[0].request_id, hello))
        feats = tuple(p.FeatureSpec(1, f"f{i}", b"\0" * 8) for i in range(3))
        while len(frames) < 2:
            frames += asm.feed(conn.recv(65536))
        conn.sendall(p.encode_response(frames[1].request_id, p.SchemaReply(1, 0x99, 12, 1000, 2000, feats)))
        release.wait(30)  # never reads again
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with featureproxy.Client("127.0.0.1", port, pool_size=1, timeout=0.5) as cl:
            cl.schema("flat")
            keys = [b"k" * 1024] * 20_000  # a 20 MB frame: far more than the socket buffers hold
            # The Python core sends on the caller's thread and knows the send stalled; on the
            # native core the connection's writer task sends, and the caller knows only that no
            # reply came in time.
            with pytest.raises(featureproxy.RequestTimeout, match=r"(could not send|no reply to GET 'flat' .*) within 0\.5s"):
                cl.get("flat", keys)
            assert cl._inflight() == 0
    finally:
        release.set()
        lsock.close()


def shedding_script(counts: dict):
    """GETs whose first key is b"shed" are answered OVERLOADED; b"shed-once..." only the first
    time; PUTs always. Counts GETs and PUTs."""
    lock, seen = threading.Lock(), set()

    def script(conn, rid, req):
        with lock:
            op = "put" if isinstance(req, p.PutRequest) else "get"
            counts[op] = counts.get(op, 0) + 1
            key = req.keys[0] if op == "get" else b""
            shed = op == "put" or key == b"shed" or (key.startswith(b"shed-once") and key not in seen)
            seen.add(key)
        if shed:
            conn.sendall(p.encode_response(rid, p.ErrorReply(featureproxy.ErrorCode.OVERLOADED, "shed")))
        else:
            conn.sendall(reply_for(rid, req))

    return script


def test_clients_retry_a_shed_get_once_and_never_a_put(fake):
    import asyncio

    counts: dict = {}
    srv = fake(shedding_script(counts))
    with featureproxy.Client("127.0.0.1", srv.port, pool_size=2) as cl:
        assert cl.timeout == 2.0 and cl.retry_overloaded  # the defaults
        assert cl.get("flat", ["shed-once-1"]).row(0) == [11, ord("s"), ord("1")]
        assert counts["get"] == 2 and (cl.overload_retries, cl.overload_retries_refused) == (1, 0)
        with pytest.raises(featureproxy.Overloaded):
            cl.get("flat", ["shed"])
        assert counts["get"] == 4 and cl.overload_retries == 2  # one retry, never two
        with pytest.raises(featureproxy.Overloaded):
            cl.put("flat", {"k": (1, [1.0, 2.0, 3.0])})
        assert counts["put"] == 1 and cl.overload_retries == 2
    with featureproxy.Client("127.0.0.1", srv.port, retry_overloaded=False) as off:
        with pytest.raises(featureproxy.Overloaded):
            off.get("flat", ["shed-once-2"])
        assert counts["get"] == 5 and off.overload_retries == 0

    async def main():
        async with await featureproxy.AsyncClient.connect("127.0.0.1", srv.port) as ac:
            assert ac.timeout == 2.0 and ac.retry_overloaded
            b = await ac.get("flat", ["shed-once-3"])
            assert b.row(0) == [11, ord("s"), ord("3")]
            assert counts["get"] == 7 and ac.overload_retries == 1
            with pytest.raises(featureproxy.Overloaded):
                await ac.get("flat", ["shed"])
            assert counts["get"] == 9 and ac.overload_retries == 2
            with pytest.raises(featureproxy.Overloaded):
                await ac.put("flat", {"k": (1, [1.0, 2.0, 3.0])})
            assert counts["put"] == 2 and ac.overload_retries == 2
        ac = await featureproxy.AsyncClient.connect("127.0.0.1", srv.port, retry_overloaded=False)
        try:
            with pytest.raises(featureproxy.Overloaded):
                await ac.get("flat", ["shed-once-4"])
            assert counts["get"] == 10 and ac.overload_retries == 0
        finally:
            await ac.close()

    asyncio.run(main())
