"""Both clients against a real proxy that sheds: a burst of GETs on one connection gets some
answered OVERLOADED; each shed GET is retried at most once, within the retry budget, and every
call ends with the rows or Overloaded, never a hang."""

from __future__ import annotations

import asyncio
import threading
import time

import featureproxy
from featureproxy import Status

from conftest import REGISTRY

USER = "user_features"
DL = 5.0  # GET deadline: generous, so a served GET is FRESH on a loaded machine
# Sheds whenever more than 4 requests wait on a connection at all (a 1 µs target).
SHEDDING = '[server]\nshed_queue_delay = "1us"\nmax_inflight_per_connection = 4\n\n'
KEYS = [f"burst-{i}" for i in range(100)]


def row(i: int) -> list[float]:
    return [float(i)] * 16


def wanted(i: int) -> list[int]:
    """GET i asks for 100 keys, read from Redis (bypass_cache): requests large and slow enough to
    pile up in the proxy's socket faster than it serves them."""
    return [(i + j * 7) % 100 for j in range(100)]


def get_args(i: int) -> tuple:
    return (USER, [KEYS[k] for k in wanted(i)])


GET_OPTS = {"deadline": DL, "bypass_cache": True}


def start(make_proxy):
    px = make_proxy(SHEDDING + REGISTRY.read_text())
    with featureproxy.Client("127.0.0.1", px.port, timeout=10) as seed:
        now = int(time.time() * 1000)
        assert seed.put(USER, {k: (now, row(i)) for i, k in enumerate(KEYS)}) == 100
    return px


def check(px, client, outcomes: list, before: tuple[float, float], elapsed: float) -> None:
    """Each outcome is (i, Batch or exception); compares the client's counters with the proxy's."""
    n = len(outcomes)
    served = overloaded = 0
    for i, out in outcomes:
        if isinstance(out, featureproxy.Overloaded):
            overloaded += 1
        elif isinstance(out, Exception):
            raise AssertionError(f"GET {i}: {out!r}")
        else:
            assert out.statuses == [Status.FRESH] * 100, i
            assert out.rows() == [row(k) for k in wanted(i)], i
            served += 1
    retries, refused = client.overload_retries, client.overload_retries_refused
    gets = px.metric("featureproxy_client_gets_total") - before[0]
    shed = px.metric("featureproxy_requests_shed_total") - before[1]
    print(
        f"{type(client).__name__}: {n} GETs in {elapsed:.2f}s: {served} served, {overloaded} OVERLOADED; "
        f"{retries} retries, {refused} refused by the budget; the proxy received {gets:.0f} GETs, shed {shed:.0f}"
    )
    assert served + overloaded == n
    assert served > 0 and overloaded > 0, "the burst was partly shed"
    # The proxy saw each call's GET once plus one per counted retry, and every OVERLOADED it sent
    # was either retried or is a caller's final answer.
    assert gets == n + retries
    assert shed == overloaded + retries
    # Every first shed was retried or refused (the 10 s timeout leaves room for every pause).
    assert overloaded >= refused
    # The budget: 10% of the GETs plus 10 for each second-long window the burst touched.
    budget = n // 10 + 10 * (int(elapsed) + 2)
    assert 0 < retries <= budget, (retries, budget)
    assert refused > 0, "a burst shed far above 10% meets the budget"


def test_sync_client_burst_is_retried_at_most_once_within_the_budget(make_proxy):
    px = start(make_proxy)
    with featureproxy.Client("127.0.0.1", px.port, timeout=10, pool_size=1) as cl:
        cl.schema(USER)
        before = (px.metric("featureproxy_client_gets_total"), px.metric("featureproxy_requests_shed_total"))
        threads_n, per_thread = 50, 20
        outcomes: list = []
        lock = threading.Lock()
        go = threading.Barrier(threads_n)

        def worker(t: int) -> None:
            go.wait()
            for j in range(per_thread):
                i = t * per_thread + j
                try:
                    out = cl.get(*get_args(i), **GET_OPTS)
                except Exception as e:
                    out = e
                with lock:
                    outcomes.append((i, out))

        t0 = time.monotonic()
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)  # each call is bounded by the client's timeout
            assert not t.is_alive(), "a GET hung past its timeout"
        check(px, cl, outcomes, before, time.monotonic() - t0)


def test_async_client_burst_is_retried_at_most_once_within_the_budget(make_proxy):
    px = start(make_proxy)

    async def main():
        async with await featureproxy.AsyncClient.connect("127.0.0.1", px.port, timeout=10) as ac:
            await ac.schema(USER)
            before = (px.metric("featureproxy_client_gets_total"), px.metric("featureproxy_requests_shed_total"))
            n = 2000
            t0 = time.monotonic()
            calls = [ac.get(*get_args(i), **GET_OPTS) for i in range(n)]
            # Bounded by the client's timeout; this bounds the test if it were not.
            results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 60)
            check(px, ac, list(enumerate(results)), before, time.monotonic() - t0)

    asyncio.run(main())
