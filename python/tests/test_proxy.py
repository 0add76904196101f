"""The blocking Client against the real featureproxy binary and a real redis-server."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

import featureproxy
from featureproxy import Status

np = pytest.importorskip("numpy")

USER = "user_features"
DL = 5.0  # GET deadline: generous, so a loaded machine never turns an answer DEGRADED
FRAUD = "fraud_features"


def user_row(i: int) -> list[float]:
    # Values exact in float32, distinct per entity and per feature.
    return [i + f / 4 for f in range(16)]


def now_ms() -> int:
    return int(time.time() * 1000)


def test_hello_and_ping(client):
    assert client.server.startswith("featureproxy/")
    assert client.max_batch >= 1 and client.max_frame >= 1024
    assert 0 < client.ping() < 1.0


def test_schema_is_cached_and_refreshable(client):
    s = client.schema(USER)
    assert client.schema(USER) is s
    assert s.names == tuple(f"f{i}" for i in range(16)) and s.row_bytes == 64 and s.homogeneous
    assert (s.stale_after_ms, s.max_staleness_ms) == (120_000, 600_000)
    fresh = client.schema(USER, refresh=True)
    assert fresh is not s and fresh.schema_id == s.schema_id


def test_put_then_get_values_equal(client, uniq):
    keys = [f"{uniq}u{i}" for i in range(10)]
    written = client.put(USER, {k: (now_ms(), user_row(i)) for i, k in enumerate(keys)})
    assert written == 10
    batch = client.get(USER, keys, bypass_cache=True, deadline=DL)
    assert len(batch) == 10
    assert batch.statuses == [Status.FRESH] * 10
    assert batch.cached == [False] * 10
    assert batch.defaulted == [False] * 10
    assert all(a is not None and 0 <= a < 60_000 for a in batch.ages_ms)
    m = batch.matrix()
    assert m.shape == (10, 16) and m.dtype == np.float32
    assert m.tolist() == [user_row(i) for i in range(10)]
    assert batch.row(3) == user_row(3)
    assert batch.to_dicts()[2] == {f"f{f}": 2 + f / 4 for f in range(16)}


def test_missing_entities_get_defaults(client, uniq):
    client.put(USER, {f"{uniq}here": (now_ms(), user_row(7))})
    keys = (k for k in [f"{uniq}gone", f"{uniq}here", f"{uniq}gone2".encode()])  # any iterable
    batch = client.get(USER, keys, deadline=DL)
    assert batch.keys == [f"{uniq}gone", f"{uniq}here", f"{uniq}gone2".encode()]
    assert batch.statuses == [Status.MISSING, Status.FRESH, Status.MISSING]
    assert batch.ages_ms[0] is None and batch.ages_ms[2] is None
    assert batch.defaulted == [True, False, True]
    m = batch.matrix()
    assert (m[batch.defaulted] == 0.0).all()  # the view's defaults
    assert m[1].tolist() == user_row(7)


def test_stale_and_expired_by_computed_at(client, uniq):
    t = time.time()
    rows = {
        f"{uniq}fresh": (now_ms() - 1_000, user_row(1)),  # int: unix ms
        f"{uniq}stale": (t - 5 * 60, user_row(2)),  # float: unix seconds; 5 min > stale_after 2m
        f"{uniq}expired": (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=20), user_row(3)),  # > 10m
    }
    assert client.put(USER, rows) == 3
    batch = client.get(USER, list(rows), bypass_cache=True, deadline=DL)
    assert batch.statuses == [Status.FRESH, Status.STALE, Status.EXPIRED]
    assert batch.defaulted == [False, False, True]
    fresh, stale, expired = batch.ages_ms
    assert 1_000 <= fresh < 30_000
    assert 300_000 <= stale < 330_000
    assert 1_200_000 <= expired < 1_230_000
    m = batch.matrix()
    assert m[1].tolist() == user_row(2)  # a stale value is still served
    assert (m[2] == 0).all()  # an expired one is withheld


def test_invalid_stored_value(client, redis_server, uniq):
    key = f"{uniq}corrupt"
    assert redis_server.command("SET", f"fp:{USER}:v1:{key}", b"\x01garbage") == b"+OK\r\n"
    batch = client.get(USER, [key], bypass_cache=True, deadline=DL)
    assert batch.statuses == [Status.INVALID] and batch.ages_ms == [None] and batch.defaulted == [True]


def test_hot_cache_flag(proxy, uniq):
    key = f"{uniq}hot"
    with featureproxy.Client("127.0.0.1", proxy.port, pool_size=1, timeout=5) as cl:
        cl.put(USER, {key: (now_ms(), user_row(4))})
        cl.get(USER, [key], deadline=DL)  # fills this shard's hot cache (ttl 1s)
        again = cl.get(USER, [key], deadline=DL)
        if again.cached == [False]:
            # Redis also reports the PUT's own write on the proxy's tracking connection, at a
            # moment of its own: landing after the read above cached the row, it drops it once.
            again = cl.get(USER, [key], deadline=DL)
        assert again.statuses == [Status.FRESH] and again.cached == [True]
        assert again.entity(0).cached and again.status_bytes[0] & 0x80
        direct = cl.get(USER, [key], bypass_cache=True, deadline=DL)
        assert direct.cached == [False]
        assert again.matrix().tolist() == direct.matrix().tolist() == [user_row(4)]


def test_mixed_dtype_view_is_a_structured_array(client, uniq):
    s = client.schema(FRAUD)
    assert not s.homogeneous and s.row_bytes == 8 + 4 + 8 + 4 + 4 + 1 + 4
    row = {
        "tx_count_1h": 12,
        "tx_sum_1h": 99.5,
        "avg_tx_amount_30d": 17.125,
        "account_age_days": 400,
        "distinct_merchants_24h": -3,
        "is_premium": True,
        "chargeback_rate_90d": 0.25,
    }
    client.put(FRAUD, {f"{uniq}acct": (now_ms(), row)})
    batch = client.get(FRAUD, [f"{uniq}acct", f"{uniq}nobody"], deadline=DL)
    m = batch.matrix()
    assert m.shape == (2,)
    assert m.dtype.names == s.names and m.dtype.itemsize == s.row_bytes
    assert m.dtype["tx_count_1h"] == np.dtype("<i8") and m.dtype["avg_tx_amount_30d"] == np.dtype("<f8")
    assert m.dtype["is_premium"] == np.dtype(bool) and m.dtype["account_age_days"] == np.dtype("<i4")
    assert {name: m[0][name].item() for name in s.names} == row
    assert batch.to_dicts()[0] == row
    # defaults for the missing account, as the registry declares them
    assert batch.statuses[1] == Status.MISSING
    assert batch.to_dicts()[1] == {
        "tx_count_1h": 0,
        "tx_sum_1h": 0.0,
        "avg_tx_amount_30d": 42.5,
        "account_age_days": 0,
        "distinct_merchants_24h": 0,
        "is_premium": False,
        "chargeback_rate_90d": 0.0,
    }
    assert m["avg_tx_amount_30d"][1] == 42.5
    assert np.shares_memory(m, np.frombuffer(batch.buffer, dtype=np.uint8))


def test_matrix_shares_memory_with_the_reply(client, uniq):
    keys = [f"{uniq}m{i}" for i in range(100)]
    client.put(USER, {k: (now_ms(), user_row(i)) for i, k in enumerate(keys)})
    batch = client.get(USER, keys, deadline=DL)
    m = batch.matrix()
    raw = np.frombuffer(batch.buffer, dtype=np.uint8)
    assert np.shares_memory(m, raw)
    # The matrix starts exactly at the reply's 8-byte aligned rows offset.
    addr = m.__array_interface__["data"][0]
    assert addr - raw.__array_interface__["data"][0] == batch.rows_offset
    assert batch.rows_offset % 8 == 0 and m.flags.aligned and m.flags.c_contiguous
    assert not m.flags.writeable and not m.flags.owndata
    base = m
    while isinstance(base, np.ndarray):
        base = base.base
    assert base is not None  # the chain ends at the reply's buffer, not at a copy
    assert m.tolist() == [user_row(i) for i in range(100)]
    c = batch.matrix(copy=True)
    assert c.flags.writeable and not np.shares_memory(c, raw)


def test_unknown_view_raises_and_connection_stays_usable(client):
    with pytest.raises(featureproxy.UnknownView) as ei:
        client.get("no_such_view", ["k"])
    err = ei.value
    assert err.code == featureproxy.ErrorCode.UNKNOWN_VIEW and isinstance(err, featureproxy.ServerError)
    assert "no_such_view" in str(err) and client.address in str(err)
    assert client.ping() > 0


def test_client_side_limits(client, uniq):
    with pytest.raises(featureproxy.InvalidRequest, match="1025 bytes"):
        client.get(USER, ["k" * 1025])
    with pytest.raises(featureproxy.InvalidRequest, match="max_batch"):
        client.get(USER, [f"k{i}" for i in range(client.max_batch + 1)])
    with pytest.raises(featureproxy.InvalidRequest, match="16 features"):
        client.put(USER, {"k": (now_ms(), [1.0] * 15)})
    long_key = uniq + "x" * (1024 - len(uniq))
    assert client.put(USER, {long_key: (now_ms(), user_row(5))}) == 1
    assert client.get(USER, [long_key], deadline=DL).row(0) == user_row(5)
    assert client.ping() > 0


def test_empty_get_and_large_get(client, uniq):
    empty = client.get(USER, [], deadline=DL)
    assert len(empty) == 0 and empty.matrix().shape == (0, 16)
    keys = [f"{uniq}big{i}" for i in range(client.max_batch)]
    batch = client.get(USER, keys, deadline=DL)
    assert len(batch) == client.max_batch
    assert set(batch.statuses) == {Status.MISSING}


def test_threads_share_the_pool(client, uniq):
    keys = [f"{uniq}t{i}" for i in range(64)]
    client.put(USER, {k: (now_ms(), user_row(i)) for i, k in enumerate(keys)})
    errors = []

    def worker(w):
        try:
            for j in range(25):
                i = (w * 7 + j * 3) % 64
                b = client.get(USER, [keys[i], keys[(i + 1) % 64]], deadline=DL)
                assert b.matrix().tolist() == [user_row(i), user_row((i + 1) % 64)]
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert client._inflight() == 0


def test_context_manager_closes(proxy):
    with featureproxy.Client("127.0.0.1", proxy.port) as cl:
        cl.ping()
    assert cl.closed
    with pytest.raises(featureproxy.ClientClosed):
        cl.ping()
