#!/usr/bin/env python3
"""Python client latency: featureproxy (python/) against redis-py reading the same rows from Redis.

Starts its own redis-server and the proxy binary on free loopback ports, writes N entities of
`user_features` (16 x f32) through the proxy, then measures, in one run:

  sequential, one caller:  GET of 1 entity and of 100 entities, keys drawn uniformly
      featureproxy.Client.get(...).matrix()                 (hot cache on, the default)
      featureproxy.Client.get(..., bypass_cache=True)        (every read goes to Redis)
      redis-py GET / pipelined GETs (transaction=False), then struct-unpack each value's header
          and np.frombuffer its row into an n x 16 float32 matrix (defaults where missing)
      redis-py MGET, then one vectorized decode (a structured dtype over the joined values)
  16 concurrent asyncio callers: the same four, with featureproxy.AsyncClient (one pipelined
      connection) and redis.asyncio (a pool of up to 16 connections)

and prints a table of p50 / p99 latency per call in microseconds, calls per second, and the
share of entities the proxy answered from its hot cache (uniform keys over 10,000 entities with
a 1 s cache TTL hit it rarely; skewed traffic hits it more).

Needs: redis-server on PATH, numpy, redis (redis-py), and the featureproxy package installed
(`pip install ./python numpy redis hiredis`). Usage, from the repository root:

    cargo build --release
    python benches/python_client.py [--proxy-bin target/release/featureproxy] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
import redis.asyncio as aredis

import featureproxy

ROOT = Path(__file__).resolve().parents[1]
VIEW = "user_features"
PREFIX = b"fp:user_features:v1:"
HDR = struct.Struct("<BQ")
NOT_CACHED = bytes(range(0x80))  # status bytes without the hot-cache bit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    end = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"{what} exited with {proc.returncode}")
            if time.monotonic() > end:
                sys.exit(f"{what} does not listen on {port}")
            time.sleep(0.01)


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


# ---- redis-py side: the decode an inference server would do without the proxy


def decode_rows(values, schema, now_ms: int) -> tuple[np.ndarray, list[int]]:
    """values: raw Redis values (None where missing) -> (n x 16 float32 matrix, statuses)."""
    n, k = len(values), len(schema.features)
    out = np.empty((n, k), dtype=np.float32)
    statuses = []
    defaults = np.asarray(schema.defaults, dtype=np.float32)
    for i, v in enumerate(values):
        if v is None or len(v) != 9 + schema.row_bytes or v[0] != 1:
            out[i] = defaults
            statuses.append(2)
            continue
        _, computed_at = HDR.unpack_from(v)
        age = max(0, now_ms - computed_at)
        if age > schema.max_staleness_ms:
            out[i] = defaults
            statuses.append(3)
        else:
            out[i] = np.frombuffer(v, dtype="<f4", count=k, offset=9)
            statuses.append(0 if age <= schema.stale_after_ms else 1)
    return out, statuses


def redis_get(r: redis.Redis, keys: list[bytes], schema):
    if len(keys) == 1:
        values = [r.get(PREFIX + keys[0])]
    else:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.get(PREFIX + key)
        values = pipe.execute()
    return decode_rows(values, schema, int(time.time() * 1000))


# MGET, then one vectorized decode of all values when every key has a well-formed value.
RECORD = np.dtype([("format", "u1"), ("computed_at", "<u8"), ("row", "<f4", (16,))])


def decode_mget(values, schema, now_ms: int):
    if all(v is not None and len(v) == RECORD.itemsize for v in values):
        rec = np.frombuffer(b"".join(values), dtype=RECORD)
        age = now_ms - rec["computed_at"].astype(np.int64)
        if (rec["format"] == 1).all() and (age <= schema.max_staleness_ms).all():
            return rec["row"], np.where(age <= schema.stale_after_ms, 0, 1)
    return decode_rows(values, schema, now_ms)


def redis_mget(r: redis.Redis, keys: list[bytes], schema):
    return decode_mget(r.mget([PREFIX + k for k in keys]), schema, int(time.time() * 1000))


async def aredis_mget(r: aredis.Redis, keys: list[bytes], schema):
    return decode_mget(await r.mget([PREFIX + k for k in keys]), schema, int(time.time() * 1000))


async def aredis_get(r: aredis.Redis, keys: list[bytes], schema):
    if len(keys) == 1:
        values = [await r.get(PREFIX + keys[0])]
    else:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.get(PREFIX + key)
        values = await pipe.execute()
    return decode_rows(values, schema, int(time.time() * 1000))


# ---- measurement


def measure_sync(fn, key_sets, warmup: int) -> tuple[list[float], float]:
    for ks in key_sets[:warmup]:
        fn(ks)
    lat = []
    t_start = time.perf_counter()
    for ks in key_sets[warmup:]:
        t0 = time.perf_counter()
        fn(ks)
        lat.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - t_start
    return lat, len(lat) / elapsed


async def measure_async(fn, key_sets, callers: int, warmup: int) -> tuple[list[float], float]:
    """``callers`` tasks take key sets from one queue until it is empty; the first ``warmup`` sets
    are not measured."""

    async def drain(work, lat):
        for ks in work:
            t0 = time.perf_counter()
            await fn(ks)
            if lat is not None:
                lat.append(time.perf_counter() - t0)

    warm = iter(key_sets[:warmup])
    await asyncio.gather(*(drain(warm, None) for _ in range(callers)))
    lat: list[float] = []
    work = iter(key_sets[warmup:])
    t_start = time.perf_counter()
    await asyncio.gather(*(drain(work, lat) for _ in range(callers)))
    elapsed = time.perf_counter() - t_start
    return lat, len(lat) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--proxy-bin", default=str(ROOT / "target" / "release" / "featureproxy"))
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--entities", type=int, default=10_000)
    ap.add_argument("--calls", type=int, default=5000, help="measured calls per 1-entity scenario")
    ap.add_argument("--callers", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="a tenth of the calls")
    args = ap.parse_args()
    calls_1 = args.calls // (10 if args.quick else 1)
    calls_100 = max(100, calls_1 // 5)
    if not Path(args.proxy_bin).is_file():
        sys.exit(f"{args.proxy_bin} not found: run `cargo build --release` first")
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not on PATH")

    tmp = tempfile.mkdtemp(prefix="fp-pybench-")
    rport, pport, sport = free_port(), free_port(), free_port()
    rproc = subprocess.Popen(
        ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pproc = None
    try:
        wait_port(rport, rproc, "redis-server")
        pproc = subprocess.Popen(
            [
                args.proxy_bin,
                "serve",
                "--config",
                str(ROOT / "examples" / "features.toml"),
                "--listen",
                f"127.0.0.1:{pport}",
                "--stats-listen",
                f"127.0.0.1:{sport}",
                "--redis",
                f"redis://127.0.0.1:{rport}",
                "--shards",
                str(args.shards),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(tmp, "proxy.log"), "wb"),
        )
        wait_port(pport, pproc, "featureproxy")
        run(args, pport, rport, calls_1, calls_100)
    finally:
        if pproc is not None:
            pproc.send_signal(signal.SIGTERM)
            pproc.wait()
        rproc.kill()
        rproc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, pport: int, rport: int, calls_1: int, calls_100: int) -> None:
    rng = random.Random(7)
    keys = [f"user:{i}".encode() for i in range(args.entities)]
    fp = featureproxy.Client("127.0.0.1", pport, timeout=5, pool_size=2)
    now = int(time.time() * 1000)
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        fp.put(VIEW, {k: (now, [rng.random() for _ in range(16)]) for k in chunk})
    schema = fp.schema(VIEW)
    r = redis.Redis(host="127.0.0.1", port=rport)

    # Both paths must agree on the values before anything is timed.
    sample = keys[:100]
    m_fp = fp.get(VIEW, sample, bypass_cache=True).matrix()
    m_r, st = redis_get(r, sample, schema)
    assert np.array_equal(m_fp, m_r) and set(st) == {0}, "featureproxy and redis-py disagree"

    def sets(n: int, count: int) -> list[list[bytes]]:
        return [rng.sample(keys, n) for _ in range(count)]

    m_r2, st2 = redis_mget(r, sample, schema)
    assert np.array_equal(m_fp, m_r2) and set(st2) == {0}, "featureproxy and redis-py MGET disagree"

    # Entities served from the proxy's hot cache, counted in C (status bytes with bit 0x80).
    hits = {"cached": 0, "all": 0}

    def count(batch):
        hits["cached"] += len(batch.status_bytes.translate(None, NOT_CACHED))
        hits["all"] += len(batch)
        return batch.matrix()

    def hit_ratio() -> str:
        ratio = f"{100 * hits['cached'] / hits['all']:.0f}%" if hits["all"] else "-"
        hits.update(cached=0, all=0)
        return ratio

    rows: list[tuple[str, int, str, list[float], float, str]] = []
    for n, count_ in ((1, calls_1), (100, calls_100)):
        warm = max(50, count_ // 10)
        ks = sets(n, count_ + warm)
        lat, rate = measure_sync(lambda k: count(fp.get(VIEW, k)), ks, warm)
        rows.append(("sequential", n, "featureproxy Client (hot cache on)", lat, rate, hit_ratio()))
        lat, rate = measure_sync(lambda k: count(fp.get(VIEW, k, bypass_cache=True)), ks, warm)
        rows.append(("sequential", n, "featureproxy Client, bypass_cache", lat, rate, hit_ratio()))
        lat, rate = measure_sync(lambda k: redis_get(r, k, schema), ks, warm)
        rows.append(("sequential", n, "redis-py GET / pipeline + numpy", lat, rate, "-"))
        lat, rate = measure_sync(lambda k: redis_mget(r, k, schema), ks, warm)
        rows.append(("sequential", n, "redis-py MGET + vectorized numpy", lat, rate, "-"))

    async def concurrent():
        afp = await featureproxy.AsyncClient.connect("127.0.0.1", pport, timeout=10)
        ar = aredis.Redis(host="127.0.0.1", port=rport, max_connections=args.callers)
        try:
            for n, count_ in ((1, calls_1), (100, calls_100)):
                warm = max(args.callers, count_ // 10)
                ks = sets(n, count_ + warm)

                async def fp_get(k):
                    return count(await afp.get(VIEW, k))

                async def fp_bypass(k):
                    return count(await afp.get(VIEW, k, bypass_cache=True))

                async def r_get(k):
                    return await aredis_get(ar, k, schema)

                async def r_mget(k):
                    return await aredis_mget(ar, k, schema)

                for name, fn in (
                    ("featureproxy AsyncClient (hot cache on)", fp_get),
                    ("featureproxy AsyncClient, bypass_cache", fp_bypass),
                    ("redis.asyncio GET / pipeline + numpy", r_get),
                    ("redis.asyncio MGET + vectorized numpy", r_mget),
                ):
                    lat, rate = await measure_async(fn, ks, args.callers, warm)
                    ratio = hit_ratio() if name.startswith("featureproxy") else "-"
                    rows.append((f"{args.callers} async callers", n, name, lat, rate, ratio))
        finally:
            await afp.close()
            await ar.aclose()

    asyncio.run(concurrent())
    fp.close()
    r.close()

    print(
        f"featureproxy Python client benchmark: {platform.python_implementation()} {platform.python_version()}, "
        f"numpy {np.__version__}, redis-py {redis.__version__} (hiredis: {redis.utils.HIREDIS_AVAILABLE}), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, proxy {args.proxy_bin} "
        f"--shards {args.shards}, {args.entities} entities of {VIEW} (16 x f32)"
    )
    print()
    print("| mode | entities/GET | client | p50 µs | p99 µs | calls/s | hot-cache hits |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for mode, n, name, lat, rate, ratio in rows:
        print(
            f"| {mode} | {n} | {name} | {pct(lat, 0.50) * 1e6:.0f} | {pct(lat, 0.99) * 1e6:.0f} | {rate:,.0f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
