#!/usr/bin/env python3
"""Client instructions per call, counted by callgrind: the part of a Python client's CPU per call
that the VM's speed does not move (user space only; the system calls are counted apart).

`benches/python_client.py --cores` times client CPU per call, which on this project's shared VM
moves 3-4x with the VM's state, the baselines' too. Instructions do not: this runs one row of that
table under `valgrind --tool=callgrind` twice, with FEW and with FEW + CALLS calls, and prints the
difference over CALLS, so start-up (imports, connecting, the servers' warm-up) cancels. The proxy
and redis-server run outside valgrind (children are not traced).

    python benches/python_instructions.py [--calls 2000] [--rows floor,native_get1,...]

Needs what `python_client.py --cores` needs, and valgrind. Takes a few minutes (valgrind runs
Python about 50x slower). PYTHONHASHSEED is fixed so both runs do the same start-up.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS = ["floor", "native_get1", "python_get1", "redis_get1", "native_get100", "python_get100", "redis_mget100"]
KEYS = [f"user:{i}".encode() for i in range(100)]
sys.path.insert(0, str(HERE))


def servers(proxy_bin: str):
    """redis-server and the proxy (--shards 1) with the 100 keys written; outside valgrind,
    started once for every row."""
    import python_client as pc

    srv = pc.Servers(proxy_bin, 1)
    c = pc.client_on("python", srv.pport, timeout=5)
    c.put(pc.VIEW, {k: (int(time.time() * 1000), [0.25] * 16) for k in KEYS})
    c.close()
    return srv


def one_process(row: str, calls: int, rport: int, pport: int) -> None:
    """Runs inside valgrind: connects, warms up, then makes `calls` calls of `row`."""
    import python_client as pc
    import redis

    impl = "native" if row.startswith("native") else "python"
    c = pc.client_on(impl, pport, timeout=30, pool_size=2)
    rc = redis.Redis(host="127.0.0.1", port=rport)
    floor = pc.RawPing(pport)
    one = [[k] for k in KEYS]
    fns = {
        "floor": lambda i: floor.ping(),
        "native_get1": lambda i: c.get(pc.VIEW, one[i % 100]).matrix(),
        "python_get1": lambda i: c.get(pc.VIEW, one[i % 100]).matrix(),
        "redis_get1": lambda i: pc.redis_get_frombuffer(rc, one[i % 100]),
        "native_get100": lambda i: c.get(pc.VIEW, KEYS).matrix(),
        "python_get100": lambda i: c.get(pc.VIEW, KEYS).matrix(),
        "redis_mget100": lambda i: pc.redis_mget_frombuffer(rc, KEYS),
    }
    fn = fns[row]
    for i in range(50):  # every path warm (hot cache, schema cached, first-call imports)
        fn(i)
    # Only this loop is counted: callgrind collects inside functools.reduce alone (its C function
    # `functools_reduce`, see counted()), which nothing before it calls.
    functools.reduce(lambda _, i: fn(i), range(calls), None)
    c.close()
    floor.close()
    rc.close()


def counted(row: str, calls: int, rport: int, pport: int) -> int:
    """Instructions of `calls` calls of `row`: the measured loop's alone (see one_process)."""
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=functools_reduce",
             f"--callgrind-out-file={d}/cg.out", sys.executable, __file__,
             "--inside", row, "--calls", str(calls), "--ports", f"{rport},{pport}"],
            env=dict(os.environ, PYTHONHASHSEED="0"),
            capture_output=True,
            text=True,
        )
        m = re.search(r"Collected : (\d+)", out.stderr)
        if out.returncode != 0 or m is None:
            sys.exit(f"{row}: valgrind run failed ({out.returncode}):\n{out.stderr[-2000:]}")
        return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--proxy-bin", default=str(HERE.parent / "target" / "release" / "featureproxy"))
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--repeat", type=int, default=1, help="count each row this many times (a check on the spread)")
    ap.add_argument("--inside", help=argparse.SUPPRESS)
    ap.add_argument("--ports", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        rport, pport = map(int, args.ports.split(","))
        one_process(args.inside, args.calls, rport, pport)
        return
    srv = servers(args.proxy_bin)
    print(f"client instructions per call (callgrind, user space, the calling loop only): {args.calls} calls per figure")
    print()
    print("| row | instructions per call (one figure per --repeat) |")
    print("|---|---:|")
    try:
        for row in args.rows.split(","):
            per = []
            for _ in range(args.repeat):
                per.append(counted(row, args.calls, srv.rport, srv.pport) / args.calls)
            print(f"| {row} | {' / '.join(f'{x:,.0f}' for x in per)} |", flush=True)
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
