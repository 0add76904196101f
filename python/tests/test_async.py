"""AsyncClient against the real featureproxy binary and a real redis-server."""

from __future__ import annotations

import asyncio
import time

import pytest

import featureproxy
from featureproxy import Status

np = pytest.importorskip("numpy")

USER = "user_features"
DL = 5.0  # GET deadline: generous, so a loaded machine never turns an answer DEGRADED


def row_of(i: int) -> list[float]:
    return [i * 16 + f + 0.5 for f in range(16)]


def run(coro):
    return asyncio.run(coro)


def test_200_concurrent_gets_share_one_connection(proxy, uniq):
    async def main():
        async with await featureproxy.AsyncClient.connect("127.0.0.1", proxy.port, timeout=10) as ac:
            keys = [f"{uniq}a{i}" for i in range(200)]
            now = int(time.time() * 1000)
            assert await ac.put(USER, {k: (now, row_of(i)) for i, k in enumerate(keys)}) == 200
            conn = ac._proto
            pairs = [[k, keys[(i + 1) % 200]] for i, k in enumerate(keys)]
            tasks = [asyncio.create_task(ac.get(USER, pair, deadline=DL)) for pair in pairs]
            await asyncio.sleep(0)  # one turn of the loop: every task has written its request
            assert ac._inflight() == 200  # all of them in flight at once, on the one connection
            batches = await asyncio.gather(*tasks)
            assert ac._proto is conn and ac._inflight() == 0
            for i, b in enumerate(batches):
                assert b.keys == [keys[i], keys[(i + 1) % 200]]
                assert b.statuses == [Status.FRESH, Status.FRESH]
                assert b.matrix().tolist() == [row_of(i), row_of((i + 1) % 200)]

    run(main())


def test_async_put_get_schema_ping(proxy, uniq):
    async def main():
        ac = await featureproxy.AsyncClient.connect("127.0.0.1", proxy.port, timeout=5)
        try:
            assert await ac.ping() > 0
            s = await ac.schema("fraud_features")
            assert await ac.schema("fraud_features") is s
            row = [5, 1.5, 2.5, 3, 4, False, 0.125]
            await ac.put("fraud_features", {f"{uniq}f".encode(): (time.time(), row)})
            b = await ac.get("fraud_features", [f"{uniq}f".encode(), f"{uniq}none"], bypass_cache=True, deadline=DL)
            assert b.statuses == [Status.FRESH, Status.MISSING]
            assert b.row(0) == row and b.ages_ms[1] is None
            assert b.matrix()["tx_count_1h"].tolist() == [5, 0]
            with pytest.raises(featureproxy.UnknownView):
                await ac.get("nope_view", ["k"])
            with pytest.raises(featureproxy.InvalidRequest):
                await ac.get(USER, [b""])
            assert await ac.ping() > 0
        finally:
            await ac.close()
        with pytest.raises(featureproxy.ClientClosed):
            await ac.ping()

    run(main())


def test_concurrent_first_use_fetches_schema_once(proxy, uniq):
    async def main():
        async with await featureproxy.AsyncClient.connect("127.0.0.1", proxy.port, timeout=5) as ac:
            sent = []
            real_call = ac._call

            async def counting(op, body, what, timeout=None):
                sent.append(what)
                return await real_call(op, body, what, timeout)

            ac._call = counting
            await asyncio.gather(*(ac.get(USER, [f"{uniq}{i}"], deadline=DL) for i in range(20)))
            assert sum(w.startswith("SCHEMA") for w in sent) == 1

    run(main())
