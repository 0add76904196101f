#!/usr/bin/env python3
"""Helpers of benches/feast.sh: Feast's feature server against featureproxy on the same Redis.

Subcommands (all print one JSON object on stdout when they report something):

  setup   --repo DIR --redis-port P --entities N [--batch 10000]
          Writes a throwaway Feast repo (project `bench`, provider local, Redis online store,
          entity_key_serialization_version 3, file registry and offline store), runs `feast apply`
          in it, materializes N drivers (ids 0..N-1, 16 Float32 features, event time = now) with
          FeatureStore.write_to_online_store in batched DataFrames, and writes the featureproxy
          registry DIR/featureproxy.toml (one `layout = "feast"` view for driver_hourly_stats).
  trace   --out FILE --entities N --count C [--seed S]
          C entity ids drawn uniformly from 0..N-1, one a line (the ids every target is sent).
  check-feast --port P --entities N
          POSTs /get-online-features for a sample of ids: every value equals what was written and
          every status is PRESENT.
  load    --target fp|feast --port P --threads T --batch B --trace FILE --warmup S --duration S
          [--pids PID,...] [--bypass-cache]
          A closed loop of T threads, each one request at a time, through featureproxy.Client.get
          (fp: one Client, pool_size=T) or http.client keep-alive POSTs (feast: one connection per
          thread, JSON decoded). Every warm-up reply is checked against the written values (fp:
          each FRESH row equal, no status but FRESH or DEGRADED; feast: all PRESENT and equal);
          measured replies have their statuses counted (fp: entities not FRESH; feast: values not
          PRESENT). Reports
          req/s, entities/s, p50/p99 and, for --pids, their CPU (each with its children) per
          request over the measured window.
  cpu     --pids PID,...
          The CPU ticks used so far by each PID and its descendants (for feast.sh to difference
          around a wrk run).
  wrk-summary FILE --batch B [--cpu-before JSON --cpu-after JSON]
          Turns the JSON line wrk's done() printed into the same report as `load`.
  loadgen-summary FILE
          The same report from `loadgen run --json FILE`.
  report  --runs runs.jsonl --meta meta.txt --results RESULTS.md
          Medians, ratios and the verdict: prints the feast.sh section and puts it between the
          `<!-- feast.sh begin/end -->` markers of RESULTS.md (appended when they are absent).
  check-runs --runs runs.jsonl --expect N
          Exit 1 unless N runs answered, without errors, every server's CPU measured.

Written values: feature j of driver i is float32(((16 i + j) mod 1000003) / 64), exact in f32.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

FEATURES = [f"f{j}" for j in range(16)]
VIEW = "driver_hourly_stats"
PROJECT = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def expected(ids):
    import numpy as np

    ids = np.asarray(ids, dtype=np.int64)
    j = np.arange(16, dtype=np.int64)
    return (((ids[:, None] * 16 + j[None, :]) % 1000003) / 64).astype(np.float32)


# ---- setup -------------------------------------------------------------------------------------

FEATURE_STORE_YAML = """\
project: {project}
provider: local
registry: data/registry.db
online_store:
  type: redis
  connection_string: "127.0.0.1:{port}"
offline_store:
  type: file
entity_key_serialization_version: 3
"""

FEATURES_PY = """\
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float32

driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)

driver_stats_source = FileSource(
    name="driver_stats_source",
    path="data/driver_stats.parquet",
    timestamp_field="event_timestamp",
)

driver_hourly_stats = FeatureView(
    name="{view}",
    entities=[driver],
    ttl=timedelta(days=1),
    schema=[{fields}],
    online=True,
    source=driver_stats_source,
)
"""

FP_TOML = """\
# featureproxy registry written by benches/feast_bench.py: Feast's driver_hourly_stats, read in
# place from Feast's Redis online store.
[[view]]
name = "{view}"
layout = "feast"
stale_after = "12h"
max_staleness = "1d"        # the Feast view's ttl
hot_cache_ttl = "{hot}"
feast = {{ project = "{project}", join_keys = [{{ name = "driver_id", dtype = "int64" }}] }}
features = [
{features}
]
"""


def frame(ids, ts):
    import numpy as np
    import pandas as pd

    vals = expected(ids)
    data = {"driver_id": np.asarray(ids, dtype=np.int64)}
    for j, f in enumerate(FEATURES):
        data[f] = vals[:, j]
    data["event_timestamp"] = pd.Series([ts] * len(ids))
    return pd.DataFrame(data)


def cmd_setup(a):
    import pandas as pd

    repo = Path(a.repo)
    (repo / "data").mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(FEATURE_STORE_YAML.format(project=PROJECT, port=a.redis_port))
    fields = ", ".join(f'Field(name="{f}", dtype=Float32)' for f in FEATURES)
    (repo / "features.py").write_text(FEATURES_PY.format(view=VIEW, fields=fields))
    ts = pd.Timestamp.now(tz="UTC").floor("ms")
    frame(list(range(10)), ts).to_parquet(repo / "data" / "driver_stats.parquet")
    t0 = time.monotonic()
    feast_bin = str(Path(sys.executable).with_name("feast"))
    r = subprocess.run([feast_bin, "apply"], cwd=repo, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"feast apply failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    t_apply = time.monotonic() - t0

    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    t0 = time.monotonic()
    ts = pd.Timestamp.now(tz="UTC").floor("ms")
    for lo in range(0, a.entities, a.batch):
        ids = list(range(lo, min(a.entities, lo + a.batch)))
        store.write_to_online_store(VIEW, frame(ids, ts))
    t_write = time.monotonic() - t0

    # Feast reads back what it wrote (its SDK, no server): a sample, values and statuses.
    sample = [0, 1, a.entities // 2, a.entities - 1]
    resp = store.get_online_features(features=[f"{VIEW}:{f}" for f in FEATURES],
                                     entity_rows=[{"driver_id": i} for i in sample]).to_dict()
    exp = expected(sample)
    for j, f in enumerate(FEATURES):
        got = resp[f]
        if any(g is None or abs(g - float(exp[k, j])) > 0 for k, g in enumerate(got)):
            sys.exit(f"Feast SDK read back {f} = {got}, written {exp[:, j].tolist()}")

    feats = "\n".join(f'  {{ name = "{f}", dtype = "f32", default = 0.0 }},' for f in FEATURES)
    (repo / "featureproxy.toml").write_text(
        FP_TOML.format(view=VIEW, project=PROJECT, hot=a.hot_cache_ttl, features=feats))
    print(json.dumps({"entities": a.entities, "apply_s": round(t_apply, 2),
                      "write_s": round(t_write, 2), "rows_per_s": round(a.entities / t_write),
                      "event_timestamp": ts.isoformat()}))


def cmd_trace(a):
    rng = random.Random(a.seed)
    with open(a.out, "w") as f:
        f.write("\n".join(str(rng.randrange(a.entities)) for _ in range(a.count)))
        f.write("\n")


# ---- checks ------------------------------------------------------------------------------------


def feast_body(ids) -> bytes:
    return json.dumps({"features": [f"{VIEW}:{f}" for f in FEATURES],
                       "entities": {"driver_id": [int(i) for i in ids]}}).encode()


def feast_check(doc, ids) -> str | None:
    """None when the feature server's answer holds the written values, all PRESENT."""
    import numpy as np

    names = doc["metadata"]["feature_names"]
    res = doc["results"]
    exp = expected(ids)
    for col, name in enumerate(names):
        r = res[col]
        if name == "driver_id":
            if [int(v) for v in r["values"]] != [int(i) for i in ids]:
                return f"driver_id column {r['values'][:5]}... is not the ids asked {list(ids)[:5]}..."
            continue
        j = FEATURES.index(name)
        if any(s != "PRESENT" for s in r["statuses"]):
            return f"{name}: statuses {sorted(set(r['statuses']))}"
        got = np.array([np.nan if v is None else v for v in r["values"]], dtype=np.float32)
        if not np.array_equal(got, exp[:, j]):
            return f"{name}: values {got[:4]} differ from written {exp[:4, j]}"
    if sorted(n for n in names if n != "driver_id") != sorted(FEATURES):
        return f"feature names {names}"
    return None


def cmd_check_feast(a):
    import http.client

    rng = random.Random(7)
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
    checked = 0
    for n in (1, 3, 100):
        ids = [0, a.entities - 1] + [rng.randrange(a.entities) for _ in range(n)]
        ids = ids[:max(n, 1)] if n < 3 else ids
        conn.request("POST", "/get-online-features", body=feast_body(ids),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            sys.exit(f"feast serve answered HTTP {resp.status}: {body[:300]!r}")
        err = feast_check(json.loads(body), ids)
        if err:
            sys.exit(f"feast serve, ids {ids[:5]}...: {err}")
        checked += len(ids)
    print(json.dumps({"checked_entities": checked, "ok": True}))


# ---- CPU of process trees ----------------------------------------------------------------------


def _stat(pid: int):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2:].split()
    # fields after the comm: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17)
    return int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14])


def tree_ticks(root: int) -> int:
    """utime+stime of root and of every live descendant, plus what root's reaped children used.

    Differenced over a window this charges a worker that exits inside the window (gunicorn
    recycles its workers) exactly once: its own ticks at the start, its whole life at the end
    through the parent's cutime."""
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st:
                procs[int(d)] = st
    if root not in procs:
        return -1
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    total = procs[root][1] + procs[root][2]
    stack = list(kids.get(root, []))
    while stack:
        p = stack.pop()
        total += procs[p][1] + procs[p][2]  # its own ticks and its reaped children's
        stack.extend(kids.get(p, []))
    return total


def cpu_snapshot(pids):
    return {str(p): tree_ticks(p) for p in pids}


def cmd_cpu(a):
    print(json.dumps(cpu_snapshot([int(p) for p in a.pids.split(",") if p])))


def cpu_report(before, after, requests):
    out = {}
    for p, b in before.items():
        e = after.get(p, -1)
        if b < 0 or e < 0 or requests == 0:
            out[p] = None
        else:
            out[p] = round((e - b) / CLK_TCK * 1e6 / requests, 2)
    return out


# ---- closed-loop load from Python ----------------------------------------------------------------


def pct(sorted_ns, q):
    if not sorted_ns:
        return None
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


def cmd_load(a):
    import numpy as np

    with open(a.trace) as f:
        trace = [int(x) for x in f.read().split()]
    pids = [int(p) for p in a.pids.split(",") if p] if a.pids else []
    start_evt = threading.Event()
    state = {"measuring": False, "stop": False}
    lats = [[] for _ in range(a.threads)]
    counts = [{"ok": 0, "bad_status": 0, "degraded": 0, "errors": 0, "verified": 0} for _ in range(a.threads)]
    failures: list[str] = []
    B = a.batch

    if a.target == "fp":
        import featureproxy

        client = featureproxy.Client("127.0.0.1", a.port, pool_size=a.threads, timeout=5.0)
        client.schema(VIEW)

        def make_call(tid):
            def call(ids, check):
                keys = [str(i) for i in ids]
                batch = client.get(VIEW, keys, bypass_cache=a.bypass_cache)
                m = batch.matrix()
                sb = batch.status_bytes
                bad = len(sb) - sb.count(0) - sb.count(0x80)  # not FRESH (from Redis or the hot cache)
                if bad:
                    lows = bytes(x & 0x7F for x in sb)
                    degraded = lows.count(4)
                    if degraded != bad:  # MISSING, STALE, EXPIRED or INVALID: never right here
                        return (bad, degraded), f"statuses {sorted(set(s.name for s in batch.statuses))} for ids {ids[:5]}"
                else:
                    degraded = 0
                if check:
                    fresh = [k for k, x in enumerate(sb) if x & 0x7F == 0]
                    exp = expected(ids)
                    if not np.array_equal(m[fresh], exp[fresh]):
                        return (bad, degraded), f"rows {m[fresh][:1]} differ from written {exp[fresh][:1]} (ids {ids[:3]})"
                return (bad, degraded), None
            return call
    else:
        import http.client

        def make_call(tid):
            conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
            hdrs = {"Content-Type": "application/json"}

            def call(ids, check):
                nonlocal conn
                conn.request("POST", "/get-online-features", body=feast_body(ids), headers=hdrs)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
                doc = json.loads(body)
                bad = sum(s != "PRESENT" for r in doc["results"] for s in r["statuses"])
                if check:
                    err = feast_check(doc, ids)
                    if err:
                        return (bad, 0), err
                return (bad, 0), None
            return call

    def worker(tid):
        call = make_call(tid)
        pos = (tid * 7919 * B) % len(trace)
        c = counts[tid]
        lat = lats[tid]
        start_evt.wait()
        while not state["stop"]:
            ids = [trace[(pos + i) % len(trace)] for i in range(B)]
            pos = (pos + B * a.threads) % len(trace)
            measuring = state["measuring"]
            t0 = time.perf_counter_ns()
            try:
                (bad, degraded), err = call(ids, not measuring)
            except Exception as e:  # noqa: BLE001 - counted and reported
                c["errors"] += 1
                if len(failures) < 5:
                    failures.append(f"{type(e).__name__}: {e}")
                if c["errors"] > 1000:
                    return
                continue
            dt = time.perf_counter_ns() - t0
            if err and len(failures) < 5:
                failures.append(err)
            if not measuring:
                c["verified"] += 1
            elif not state["stop"]:
                lat.append(dt)
                c["ok"] += 1
                c["bad_status"] += bad
                c["degraded"] += degraded

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(a.threads)]
    for t in threads:
        t.start()
    start_evt.set()
    time.sleep(a.warmup)
    for c in counts:
        c["ok"] = 0
    cpu0 = cpu_snapshot(pids)
    t0 = time.monotonic()
    state["measuring"] = True
    time.sleep(a.duration)
    state["stop"] = True
    elapsed = time.monotonic() - t0
    cpu1 = cpu_snapshot(pids)
    for t in threads:
        t.join(timeout=35)
    allns = sorted(x for l in lats for x in l)
    req = len(allns)
    out = {
        "target": a.target, "threads": a.threads, "batch": B, "requests": req,
        "rps": round(req / elapsed, 1), "entities_per_s": round(req * B / elapsed, 1),
        "p50_us": pct(allns, 0.50), "p99_us": pct(allns, 0.99), "max_us": (allns[-1] / 1000 if allns else None),
        "errors": sum(c["errors"] for c in counts),
        "not_ok": sum(c["bad_status"] for c in counts),
        "degraded": sum(c["degraded"] for c in counts),
        "verified_requests": sum(c["verified"] for c in counts),
        "verify_failures": failures,
        "cpu_us_per_request": cpu_report(cpu0, cpu1, req),
    }
    print(json.dumps(out))
    if a.target == "fp":
        client.close()
    if failures or out["verified_requests"] == 0 or req == 0:
        sys.exit(1)


def cmd_wrk_summary(a):
    line = None
    for l in Path(a.file).read_text().splitlines():
        if l.startswith("WRKJSON "):
            line = l[len("WRKJSON "):]
    if line is None:
        sys.exit(f"{a.file} holds no WRKJSON line")
    w = json.loads(line)
    secs = w["duration_us"] / 1e6
    before = json.loads(a.cpu_before) if a.cpu_before else {}
    after = json.loads(a.cpu_after) if a.cpu_after else {}
    errs = sum(w["errors"].values())
    req = w["requests"]
    out = {
        "target": "feast-wrk", "connections": a.connections, "batch": a.batch, "requests": req,
        "rps": round(req / secs, 1), "entities_per_s": round(req * a.batch / secs, 1),
        "p50_us": w["p50_us"], "p99_us": w["p99_us"], "max_us": w["max_us"],
        "errors": errs, "error_kinds": w["errors"], "not_ok": None,
        "cpu_us_per_request": cpu_report(before, after, req),
    }
    print(json.dumps(out))


def cmd_loadgen_summary(a):
    j = json.loads(Path(a.file).read_text())
    st = j["statuses"]
    ents = j["entities_answered"]
    cpu = {str(c["pid"]): (round(c["us_per_request"], 2) if c.get("us_per_request") is not None else None)
           for c in j.get("server_cpu", [])}
    out = {
        "target": j["target"], "connections": j["connections"], "batch": int(j["batch"]),
        "requests": j["responses"], "rps": round(j["achieved_rps"], 1),
        "entities_per_s": round(j["entities_per_s"], 1),
        "p50_us": j["latency_us"]["p50"], "p99_us": j["latency_us"]["p99"], "max_us": j["latency_us"]["max"],
        "errors": j["errors_total"], "error_kinds": j["errors"],
        "not_ok": ents - st.get("fresh", 0), "degraded": st.get("degraded", 0), "statuses": st, "cached_share": j.get("cached_share"),
        "cpu_us_per_request": cpu,
    }
    print(json.dumps(out))


# ---- report ------------------------------------------------------------------------------------

NAMES = {
    "feast": "`feast serve`, defaults (1 worker)",
    "feast-tuned": "`feast serve`, 2 workers, no access log, no recycling",
    "fp": "featureproxy, loadgen, hot cache on",
    "fp-bypass": "featureproxy, loadgen, `--bypass-cache`",
    "fp-py": "featureproxy, Python client (16 threads)",
}
ORDER = ["feast", "feast-tuned", "fp", "fp-bypass", "fp-py"]


def median(v):
    v = sorted(x for x in v if x is not None)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def fmt_us(v):
    if v is None:
        return "-"
    if v < 1000:
        return f"{v:.0f} µs"
    if v < 1_000_000:
        return f"{v / 1000:.2f} ms" if v < 10_000 else f"{v / 1000:.1f} ms"
    return f"{v / 1e6:.2f} s"


def fmt_n(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def read_meta(path):
    meta = {"server": []}
    for line in Path(path).read_text().splitlines():
        k, _, v = line.partition("=")
        if k == "server":
            meta["server"].append(v)
        else:
            meta[k] = v
    return meta


def cmd_report(a):
    runs = [json.loads(l) for l in Path(a.runs).read_text().splitlines() if l.strip()]
    meta = read_meta(a.meta)
    pid_name = {}
    for s_ in meta["server"]:
        if "# pid " in s_:
            pid = s_.split("# pid ")[1].split()[0]
            name = ("redis" if s_.startswith("redis-server") else "featureproxy" if " serve --config" in s_
                    else "feast serve (tuned)" if "--workers 2" in s_ else "feast serve")
            pid_name[pid] = name
    by = {}
    for r in runs:
        by.setdefault((r["target"], r["batch"]), []).append(r)
    rounds = int(meta["rounds"])
    quick = meta["quick"] == "1"
    setup = json.loads(meta["setup"])
    L = []
    w = L.append
    w("<!-- feast.sh begin -->")
    w("## Feast's feature server against featureproxy, on Feast's own Redis data")
    w("")
    if quick:
        w("**Quick smoke run (--quick): tiny and short, not a measurement.**")
        w("")
    w(f"Generated by `benches/feast.sh{' --quick' if quick else ''} --rounds {rounds}` on {meta['date']}, "
      f"commit {meta['commit']}. This section is rewritten by each run of feast.sh; the rest of the file is not. "
      f"The run took {int(meta['secs_total']) // 60} min {int(meta['secs_total']) % 60} s "
      f"({int(meta['secs_runs']) // 60} min {int(meta['secs_runs']) % 60} s of load).")
    w("")
    w(f"- Data: Feast {meta['feast']} wrote it. A throwaway repo (project `bench`, provider local, Redis online store, "
      f"`entity_key_serialization_version: 3`, file registry and offline store; `feature_store.yaml` and `features.py` "
      f"are in `{meta['out']}/`): entity `driver_id` (Int64), feature view `driver_hourly_stats` with 16 Float32 "
      f"features f0..f15, ttl 1 day. `feast apply` ({setup['apply_s']} s), then {int(meta['entities']):,} drivers "
      f"(ids 0..{int(meta['entities']) - 1}, event time = now) with `FeatureStore.write_to_online_store` in "
      f"DataFrames of 10,000: {setup['write_s']} s, {setup['rows_per_s']:,} rows/s (`{meta['setup_cmd']}`). "
      f"Feature j of driver i is float32(((16 i + j) mod 1000003) / 64).")
    w(f"- featureproxy reads the same keys in place: one `layout = \"feast\"` view (`{meta['out']}/featureproxy.toml`, "
      f"written by the bench; project `bench`, join key `driver_id` int64, the 16 features, `max_staleness = \"1d\"`, "
      f"`hot_cache_ttl = \"1s\"`), release build, `--shards 1` (README: one shard on this shared 2-core host).")
    w(f"- Load: every target gets the same requests, ids replayed from one trace of 1,000,000 ids drawn uniformly "
      f"from 0..{int(meta['entities']) - 1} (seed 1; each connection starts at its own place), {meta['conns']} "
      f"callers each with 1 request in flight (closed loop), 1 entity and 100 entities per request. `feast serve` "
      f"is driven by wrk {meta['wrk']} (2 threads, {meta['conns']} keep-alive connections, a Lua script building "
      f"each POST /get-online-features body: `{meta['out']}/feast.lua`); featureproxy by `loadgen run --closed` "
      f"({meta['conns']} connections x 1 in flight, 1 sender + 1 receiver thread) and by the Python client "
      f"(`featureproxy.Client.get` + `Batch.matrix()`, Python {meta['python']}, {meta['conns']} threads sharing one "
      f"client with 16 pooled connections). Uniform ids are the hard case for the hot cache; with skewed traffic it "
      f"hits more. `--bypass-cache` reads every entity from Redis, as Feast's server does.")
    w(f"- Each run: {meta['warm']} s warm-up (for wrk a separate run, discarded), then {meta['dur']} s measured. "
      f"{rounds} round(s); each round runs both loads against every target, in a different order each round "
      f"(rotated, reversed every other round). Tables give the median over the rounds; ratios are taken within "
      f"a round and their median given.")
    w(f"- Correctness: before the runs, both Feast servers answered 108 sampled entities (1, 3 and 100 per "
      f"request) with exactly the written values, all PRESENT (`feast_bench.py check-feast`); wrk itself checks "
      f"only the HTTP status (non-2xx counts as an error). Every warm-up request of the Python client run was "
      f"checked: each FRESH row equal to the written values, and no entity MISSING, STALE, EXPIRED or INVALID "
      f"(any would fail the run); in the measured window the statuses of every reply are counted, as loadgen "
      f"counts them for its runs. DEGRADED (the proxy's default 50 ms deadline passed before Redis answered) "
      f"is counted and shown, not failed.")
    w(f"- Server CPU: for featureproxy under loadgen, `loadgen run --server-pid` (proxy, Redis); for `feast serve` "
      f"and the Python client, `/proc` ticks of the process trees (gunicorn master + workers including recycled "
      f"ones; proxy; Redis) sampled around the measured window, per request answered.")
    w(f"- Machine: {meta['cores']} cores ({meta['cpu']}), Linux {meta['kernel']}, shared and noisy (other jobs "
      f"ran during the run); everything on this host, sharing the cores: redis-server {meta['redis']}, the servers "
      f"and the load generators, {meta['prio']}. Load average {meta['load_start']} at the start, {meta['load_end']} "
      f"at the end.")
    w("")
    w("### Throughput and latency (medians over the rounds)")
    w("")
    w("| target | entities / request | req/s | entities/s | p50 | p99 | errors | not FRESH | server CPU µs/request | command (round 1) |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for b in (1, 100):
        for t in ORDER:
            rs = by.get((t, b), [])
            if not rs:
                continue
            cpu = {}
            for r in rs:
                for pid, v in (r.get("cpu_us_per_request") or {}).items():
                    cpu.setdefault(pid_name.get(pid, pid), []).append(v)
            cpu_s = " + ".join(f"{k} {fmt_n(median(v))}" for k, v in cpu.items()) or "-"
            errs = sum(r.get("errors") or 0 for r in rs) + sum(r.get("rc", 0) != 0 for r in rs)
            nok = [r.get("not_ok") for r in rs]
            deg = sum(r.get("degraded") or 0 for r in rs)
            nok_s = "-" if all(x is None for x in nok) else f"{sum(x or 0 for x in nok):,}"
            if deg:
                nok_s += f" ({deg:,} DEGRADED)"
            cmd1 = next((r["cmd"] for r in rs if r["round"] == 1), rs[0]["cmd"])
            w(f"| {NAMES[t]} | {b} | **{fmt_n(median([r.get('rps') for r in rs]))}** | "
              f"{fmt_n(median([r.get('entities_per_s') for r in rs]))} | {fmt_us(median([r.get('p50_us') for r in rs]))} | "
              f"**{fmt_us(median([r.get('p99_us') for r in rs]))}** | {errs} | {nok_s} | {cpu_s} | `{cmd1}` |")
    w("")
    w("`not FRESH`: entities answered with another status, summed over the rounds (loadgen and the Python client; "
      "DEGRADED means the proxy's 50 ms default deadline passed before Redis answered; `-`: not counted, wrk reads "
      "no bodies). `errors`: failed requests summed over the rounds (wrk: socket errors and non-2xx; loadgen: "
      "errors of every kind) plus runs that did not exit cleanly; for `feast serve` with its defaults, the read "
      "errors are keep-alive connections closed when gunicorn recycles its worker (`--max-requests 1000`). "
      "Latencies are closed-loop: with 16 callers and nothing queued elsewhere, p50 is about 16 / req/s.")
    w("")
    # Where the time goes, from this run's own figures.
    def med_of(t, b, key):
        return median([r.get(key) for r in by.get((t, b), [])])

    def cpu_of(t, b, name):
        v = []
        for r in by.get((t, b), []):
            for pid, x in (r.get("cpu_us_per_request") or {}).items():
                if pid_name.get(pid, pid) == name:
                    v.append(x)
        return median(v)

    cores = int(meta["cores"])
    notes = []
    for ft, nm in (("feast", "feast serve"), ("feast-tuned", "feast serve (tuned)")):
        c = cpu_of(ft, 100, nm)
        if c:
            notes.append(f"`feast serve` ({'defaults' if ft == 'feast' else 'tuned'}) spends {c / 1000:,.1f} ms of CPU per "
                         f"100-entity request ({c / 100:,.0f} µs per entity) and Redis {fmt_n(cpu_of(ft, 100, 'redis'))} µs: "
                         f"even with all {cores} cores to itself it could not pass {cores * 1e6 / c:,.0f} req/s.")
    c, cr = cpu_of("fp-bypass", 100, "featureproxy"), cpu_of("fp-bypass", 100, "redis")
    if c and cr:
        notes.append(f"featureproxy reading every entity from Redis (`--bypass-cache`, 100 entities) spends {c / 100:.1f} µs "
                     f"of proxy CPU and {cr / 100:.1f} µs of Redis CPU per entity (one HMGET of 17 fields per entity); with "
                     f"`--shards 1` the proxy is one thread, so it cannot pass {1e6 / c:,.0f} req/s; it achieved "
                     f"{fmt_n(med_of('fp-bypass', 100, 'rps'))}.")
    cs = median([r.get("cached_share") for r in by.get(("fp", 100), [])])
    c1 = cpu_of("fp", 100, "featureproxy")
    if cs is not None and c1:
        notes.append(f"With the hot cache on, {cs * 100:.0f}% of the 100-entity reads were served from it (uniform ids over "
                     f"{int(meta['entities']):,} drivers, 1 s TTL) and the proxy spent {c1 / 100:.1f} µs per entity.")
    deg = sum(r.get("degraded") or 0 for r in runs)
    if deg:
        notes.append(f"{deg:,} entities in all came back DEGRADED: the proxy's 50 ms default deadline passed while the "
                     f"entities waited for the proxy's reads from Redis (mostly at 100 entities per request, where requests queue "
                     f"behind the proxy's single shard).")
    if notes:
        w("### Where the time goes")
        w("")
        for n_ in notes:
            w(f"- {n_}")
        w("")
    w("### featureproxy against `feast serve`: ratios")
    w("")
    w("Throughput ratio = featureproxy req/s over Feast's; p99 ratio = featureproxy p99 over Feast's (below 1 is "
      "better; 1/50 = 0.02). Each ratio is taken within a round; the median, then each round's value.")
    w("")
    w("| entities / request | featureproxy | against | throughput ratio | per round | p99 ratio | per round |")
    w("|---|---|---|---|---|---|---|")
    verdict = {}
    for b in (1, 100):
        for fpt in ("fp", "fp-bypass", "fp-py"):
            for ft in ("feast", "feast-tuned"):
                tr, pr = [], []
                for r in range(1, rounds + 1):
                    x = next((q for q in by.get((fpt, b), []) if q["round"] == r), None)
                    y = next((q for q in by.get((ft, b), []) if q["round"] == r), None)
                    if not x or not y or not x.get("rps") or not y.get("rps") or not x.get("p99_us") or not y.get("p99_us"):
                        continue
                    tr.append(x["rps"] / y["rps"])
                    pr.append(x["p99_us"] / y["p99_us"])
                if not tr:
                    continue
                mt, mp = median(tr), median(pr)
                verdict[(b, fpt, ft)] = (mt, mp)
                w(f"| {b} | {NAMES[fpt]} | {NAMES[ft]} | **{mt:,.1f}x** | {', '.join(f'{v:,.1f}' for v in tr)} | "
                  f"**{mp:.4f}** (1/{1 / mp:,.0f}) | {', '.join(f'{v:.4f}' for v in pr)} |")
    w("")
    w("### The goal: at 100 entities, at least 50x Feast's throughput and at most 1/50 of its p99")
    w("")
    for fpt in ("fp", "fp-bypass", "fp-py"):
        for ft in ("feast", "feast-tuned"):
            v = verdict.get((100, fpt, ft))
            if not v:
                continue
            mt, mp = v
            ok_t, ok_p = mt >= 50, mp <= 0.02
            state = "**met**" if ok_t and ok_p else ("**not met**" if not ok_t and not ok_p else "**half met**")
            w(f"- {NAMES[fpt]} against {NAMES[ft]}: {state}: throughput {mt:,.1f}x ({'≥' if ok_t else '<'} 50x), "
              f"p99 {mp:.4f} = 1/{1 / mp:,.0f} of Feast's ({'≤' if ok_p else '>'} 1/50).")
    w("")
    w("Servers (ports and pids of this run; the pids in the commands above refer to these; `trace.txt` is "
      "`feast_bench.py trace --entities N --count 1000000 --seed 1`):")
    w("")
    w("```")
    for s_ in meta["server"]:
        w(s_)
    w("```")
    w("")
    w(f"Per-run reports (wrk output, loadgen text and JSON, Python client JSON), `runs.jsonl` with every run's "
      f"figures and command, and the Feast and featureproxy configuration are in `{meta['out']}/`.")
    w("<!-- feast.sh end -->")
    section = "\n".join(L) + "\n"
    print(section, end="")
    path = Path(a.results)
    text = path.read_text() if path.exists() else ""
    b0, b1 = "<!-- feast.sh begin -->", "<!-- feast.sh end -->"
    if b0 in text and b1 in text:
        i = text.index(b0)
        j = text.index(b1, i) + len(b1)
        if j < len(text) and text[j] == "\n":
            j += 1
        text = text[:i] + section + text[j:]
    else:
        text = text + ("\n" if text and not text.endswith("\n\n") else "") + section
    tmp = path.with_name(path.name + ".feast.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def cmd_check_runs(a):
    runs = [json.loads(l) for l in Path(a.runs).read_text().splitlines() if l.strip()]
    bad = []
    if len(runs) != a.expect:
        bad.append(f"{len(runs)} of {a.expect} runs recorded")
    for r in runs:
        why = []
        if r.get("rc"):
            why.append(f"exit {r['rc']}")
        if not r.get("requests"):
            why.append("no request answered")
        kinds = r.get("error_kinds") or {}
        if r.get("errors"):
            # `feast serve` with its defaults recycles its worker every ~1000 requests, dropping the
            # keep-alive connections it holds: wrk counts those as read errors. Reported, not fatal.
            recycled = r["target"] == "feast" and set(k for k, v in kinds.items() if v) <= {"read", "connect"} \
                and r["errors"] <= 0.01 * (r.get("requests") or 0) + 50
            if recycled:
                print(f"note: {r['label']}: {r['errors']} connections dropped {kinds} (worker recycling)", file=sys.stderr)
            else:
                why.append(f"{r['errors']} errors {kinds}")
        if r.get("verify_failures"):
            why.append(f"verification: {r['verify_failures'][:2]}")
        if (r.get("not_ok") or 0) - (r.get("degraded") or 0) > 0:
            why.append(f"{r['not_ok'] - (r.get('degraded') or 0)} entities neither FRESH nor DEGRADED {r.get('statuses', '')}")
        cpu = r.get("cpu_us_per_request") or {}
        if not cpu or any(v is None or v <= 0 for v in cpu.values()):
            why.append(f"server CPU not measured: {cpu}")
        if why:
            bad.append(f"{r['label']}: {'; '.join(why)}")
    for b in bad:
        print(f"check: {b}", file=sys.stderr)
    sys.exit(1 if bad else 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--repo", required=True)
    s.add_argument("--redis-port", type=int, required=True)
    s.add_argument("--entities", type=int, default=100_000)
    s.add_argument("--batch", type=int, default=10_000)
    s.add_argument("--hot-cache-ttl", default="1s")
    s = sub.add_parser("trace")
    s.add_argument("--out", required=True)
    s.add_argument("--entities", type=int, required=True)
    s.add_argument("--count", type=int, default=1_000_000)
    s.add_argument("--seed", type=int, default=1)
    s = sub.add_parser("check-feast")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--entities", type=int, required=True)
    s = sub.add_parser("load")
    s.add_argument("--target", choices=["fp", "feast"], required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--threads", type=int, default=4)
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--trace", required=True)
    s.add_argument("--warmup", type=float, default=3)
    s.add_argument("--duration", type=float, default=15)
    s.add_argument("--pids", default="")
    s.add_argument("--bypass-cache", action="store_true")
    s = sub.add_parser("cpu")
    s.add_argument("--pids", required=True)
    s = sub.add_parser("wrk-summary")
    s.add_argument("file")
    s.add_argument("--batch", type=int, required=True)
    s.add_argument("--connections", type=int, default=16)
    s.add_argument("--cpu-before", default="")
    s.add_argument("--cpu-after", default="")
    s = sub.add_parser("loadgen-summary")
    s.add_argument("file")
    s.add_argument("--pids", default="")
    s = sub.add_parser("report")
    s.add_argument("--runs", required=True)
    s.add_argument("--meta", required=True)
    s.add_argument("--results", required=True)
    s = sub.add_parser("check-runs")
    s.add_argument("--runs", required=True)
    s.add_argument("--expect", type=int, required=True)
    a = ap.parse_args()
    {"setup": cmd_setup, "trace": cmd_trace, "check-feast": cmd_check_feast, "load": cmd_load,
     "cpu": cmd_cpu, "wrk-summary": cmd_wrk_summary, "loadgen-summary": cmd_loadgen_summary,
     "report": cmd_report, "check-runs": cmd_check_runs}[a.cmd](a)


if __name__ == "__main__":
    main()
