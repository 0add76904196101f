"""Real faults, each on a private redis-server + proxy pair: the proxy SIGKILLed mid-call and
restarted on the same port, a frozen proxy, a frozen Redis, a changed schema, a required token."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest

import featureproxy
from featureproxy import Status

from conftest import REGISTRY, wait_for

USER = "user_features"
DL = 5.0  # GET deadline: generous, so a loaded machine never turns an answer DEGRADED


def row(i: int) -> list[float]:
    return [float(i)] * 16


def now_ms() -> int:
    return int(time.time() * 1000)


def test_killed_mid_call_raises_then_reconnects_after_restart(make_proxy):
    px = make_proxy()
    with featureproxy.Client("127.0.0.1", px.port, timeout=10, pool_size=2) as cl:
        cl.put(USER, {"k": (now_ms(), row(3))})
        cl.ping()
        cl.ping()  # both pooled connections are open
        outcome: dict = {}

        def call():
            try:
                outcome["batch"] = cl.get(USER, ["k"], deadline=DL)
            except Exception as e:
                outcome["error"] = e

        px.freeze()  # the request will sit unanswered in the proxy's socket buffer
        t = threading.Thread(target=call)
        t.start()
        wait_for(lambda: cl._inflight() == 1, what="the GET to be in flight")
        px.kill()  # SIGKILL mid-call
        t.join(timeout=10)
        assert not t.is_alive(), "the call did not return after the proxy died"
        err = outcome.get("error")
        # Either the request had left (the connection died under it) or the client had not
        # written it yet when the socket died, retried it once on a fresh connection, and found
        # nobody listening: both are connection errors that name the address.
        assert isinstance(err, (featureproxy.ConnectionLost, featureproxy.ConnectFailed)), outcome
        assert isinstance(err, ConnectionError)
        msg = str(err)
        assert f"featureproxy 127.0.0.1:{px.port}" in msg
        if isinstance(err, featureproxy.ConnectionLost):
            assert "GET 'user_features'" in msg and ("reset" in msg or "closed" in msg), msg

        # While it is down, a call says so and names the address.
        with pytest.raises(featureproxy.ConnectFailed, match=f"127.0.0.1:{px.port}: cannot connect"):
            cl.get(USER, ["k"], deadline=DL)

        px.start()  # same port, same Redis
        for _ in range(4):  # every pooled connection is replaced transparently
            assert cl.get(USER, ["k"], deadline=DL).matrix().tolist() == [row(3)]


def test_async_killed_mid_call_then_reconnects(make_proxy):
    px = make_proxy()

    async def main():
        ac = await featureproxy.AsyncClient.connect("127.0.0.1", px.port, timeout=10)
        try:
            await ac.put(USER, {"k": (now_ms(), row(4))})
            px.freeze()
            task = asyncio.create_task(ac.get(USER, ["k"], deadline=DL))
            await asyncio.sleep(0)
            assert ac._inflight() == 1
            px.kill()
            with pytest.raises(featureproxy.ConnectionLost, match=f"127.0.0.1:{px.port}.*GET 'user_features'"):
                await task
            px.start()
            b = await ac.get(USER, ["k"], deadline=DL)
            assert b.matrix().tolist() == [row(4)]
        finally:
            await ac.close()

    asyncio.run(main())


def test_timeout_on_frozen_proxy_then_recovers(make_proxy):
    px = make_proxy()
    with featureproxy.Client("127.0.0.1", px.port, timeout=0.3, pool_size=1) as cl:
        cl.put(USER, {"a": (now_ms(), row(1)), "b": (now_ms(), row(2))})
        px.freeze()
        t0 = time.monotonic()
        with pytest.raises(featureproxy.RequestTimeout, match=f"127.0.0.1:{px.port}: no reply to GET"):
            cl.get(USER, ["a"])  # waits the client's timeout, 0.3 s
        assert time.monotonic() - t0 < 2
        assert cl._inflight() == 0  # the waiter is gone
        px.signal(signal.SIGCONT)
        # The late reply to "a" arrives first on this connection and must not reach this caller.
        assert cl.get(USER, ["b"], deadline=DL).matrix().tolist() == [row(2)]
        assert cl.get(USER, ["a"], deadline=DL).matrix().tolist() == [row(1)]


def test_frozen_redis_gives_degraded_defaults(make_proxy):
    px = make_proxy()
    with featureproxy.Client("127.0.0.1", px.port, timeout=5) as cl:
        cl.put(USER, {"d": (now_ms(), row(9))})
        px.redis.freeze()
        try:
            b = cl.get(USER, ["d", "e"], deadline=0.05, bypass_cache=True)
            assert b.statuses == [Status.DEGRADED, Status.DEGRADED]
            assert b.defaulted == [True, True] and b.ages_ms == [None, None]
            assert (b.matrix() == 0).all()
            with pytest.raises((featureproxy.ServerTimeout, featureproxy.BackendUnavailable)):
                cl.put(USER, {"d": (now_ms(), row(1))})
        finally:
            px.redis.signal(signal.SIGCONT)


def test_changed_schema_is_refetched_and_retried(make_proxy):
    registry = REGISTRY.read_text()
    px = make_proxy(registry)
    with featureproxy.Client("127.0.0.1", px.port, timeout=5) as cl:
        old = cl.schema("fraud_features")
        assert old.defaults[2] == 42.5
        assert px.terminate() == 0  # SIGTERM: clean exit
        changed = registry.replace("default = 42.5", "default = 7.25")
        assert changed != registry
        px.start(changed)
        b = cl.get("fraud_features", ["nobody"], deadline=DL)  # reconnects; SCHEMA_MISMATCH; refetch; retry
        new = cl.schema("fraud_features")
        assert new.schema_id != old.schema_id and b.schema_id == new.schema_id
        assert b.to_dicts()[0]["avg_tx_amount_30d"] == 7.25
        # PUT refreshes the same way: rows are encoded for the new schema
        px.terminate()
        px.start(registry)
        assert cl.put("fraud_features", {"x": (now_ms(), [1, 1.0, 1.0, 1, 1, True, 1.0])}) == 1
        assert cl.schema("fraud_features").schema_id == old.schema_id


def test_token_required(make_proxy):
    px = make_proxy(extra=("--auth-token", "s3cret"))
    with pytest.raises(featureproxy.Unauthorized, match=f"127.0.0.1:{px.port}"):
        featureproxy.Client("127.0.0.1", px.port, token="wrong")
    with featureproxy.Client("127.0.0.1", px.port, token="s3cret") as cl:
        assert cl.ping() > 0

    async def main():
        with pytest.raises(featureproxy.Unauthorized):
            await featureproxy.AsyncClient.connect("127.0.0.1", px.port)
        async with await featureproxy.AsyncClient.connect("127.0.0.1", px.port, token="s3cret") as ac:
            assert await ac.ping() > 0

    asyncio.run(main())
