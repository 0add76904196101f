"""End to end: Feast writes its Redis online store, featureproxy (layout "feast") serves the same rows, and
rows PUT through featureproxy are read back by Feast.

Real parts only: a redis-server on a free port, the real feast SDK (write_to_online_store,
get_online_features), featureproxy.feast_export run as a subprocess, and the featureproxy binary.
GET keys are the join key values as text (ints in decimal); for a compound key the values in the
view's join_keys order, joined by the byte 0x1F.
"""

from __future__ import annotations

import copy
import datetime as dt
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

import featureproxy
from featureproxy import Status

sys.path.insert(0, str(Path(__file__).resolve().parent / "feast"))
import feastrepo  # noqa: E402
from conftest import ProxyProcess, RedisServer  # noqa: E402
from feastrepo import f32  # noqa: E402

import feast  # noqa: E402  (python/run-tests.sh installs it: python/requirements-feast.txt)

DL = 5.0
SEP = "\x1f"
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000

ENTITIES = {"driver": ("driver_id", "Int64"), "user": ("user_id", "String"), "city": ("city", "String")}
# view -> (entities in declaration order, [(feature, Feast type)], Feast ttl)
VIEWS = {
    "driver_hourly_stats": (
        ["driver"],
        [("conv_rate", "Float32"), ("acc_rate", "Float64"), ("avg_daily_trips", "Int32"),
         ("lifetime_trips", "Int64"), ("is_active", "Bool")],
        dt.timedelta(days=1),
    ),
    "driver_daily_stats": (["driver"], [("rating", "Float64"), ("cancels", "Int32"), ("online", "Bool")], dt.timedelta(days=7)),
    "user_profile": (
        ["user"],
        [("score", "Float32"), ("age", "Int32"), ("visits", "Int64"), ("premium", "Bool"), ("nickname", "String")],
        dt.timedelta(hours=6),
    ),
    "driver_city_stats": (["driver", "city"], [("trips", "Int64"), ("share", "Float32")], dt.timedelta(days=2)),
}
NUMPY = {"Float32": "float32", "Float64": "float64", "Int32": "int32", "Int64": "int64", "Bool": "bool", "String": "object"}
# The training-time defaults the test sets in the exported config (all distinct from the stored values).
DEFAULTS = {
    "driver_hourly_stats": {"conv_rate": 0.25, "acc_rate": -1.5, "avg_daily_trips": -1, "lifetime_trips": 7, "is_active": True},
    "driver_daily_stats": {"rating": 4.5, "cancels": 3, "online": True},
    "user_profile": {"score": 0.5, "age": 30, "visits": -2, "premium": True},
    "driver_city_stats": {"trips": 11, "share": 0.125},
}
PACKED = {v: [f for f, t in feats if t != "String"] for v, (_, feats, _) in VIEWS.items()}

# (view, join key values in declaration order, age of the event timestamp in ms, values in schema order)
ROWS = [
    ("driver_hourly_stats", (1001,), 1 * MIN + 123, (0.5, 0.125, 308, 123456789012, True)),
    ("driver_hourly_stats", (1002,), 2 * MIN + 456, (0.0, 0.0, 0, 0, False)),
    ("driver_hourly_stats", (-7,), 3 * MIN + 789, (-0.1, -1e300, -2147483648, -9223372036854775808, True)),
    ("driver_hourly_stats", (0,), 4 * MIN, (3.4028234663852886e38, 5e-324, 2147483647, 9223372036854775807, False)),
    ("driver_hourly_stats", (1003,), 18 * HOUR, (1.5, 2.5, 3, 4, True)),  # STALE: 12h < 18h <= 1d
    ("driver_hourly_stats", (1004,), 3 * DAY, (9.5, 9.5, 9, 9, True)),  # EXPIRED: > 1d
    ("driver_daily_stats", (1001,), 5 * MIN, (4.75, 12, False)),  # shares the hash of driver 1001 above
    ("driver_daily_stats", (1002,), 8 * DAY, (1.0, 1, False)),  # EXPIRED (7d), while hourly 1002 is FRESH
    ("driver_daily_stats", (5000000000,), 6 * MIN, (-2.25, -3, True)),  # no driver_hourly_stats row
    ("driver_daily_stats", (7000000001,), 7 * MIN, (0.5, 7, False)),  # the PUT test adds driver_hourly_stats
    ("user_profile", ("alice",), 1 * MIN, (0.75, 33, 1000, False, "ally")),
    ("user_profile", ("björk-用户",), 2 * MIN, (-0.25, 0, -1, True, "b")),
    ("user_profile", ("42",), 3 * MIN, (0.0, -1, 0, False, "n")),
    ("user_profile", ("old",), 7 * HOUR, (1.0, 1, 1, True, "o")),  # EXPIRED: > 6h
    ("driver_city_stats", (1001, "Paris"), 1 * MIN, (17, 0.375)),
    ("driver_city_stats", (-5, "São Paulo"), 2 * MIN, (-3, -0.5)),
]
NEVER_WRITTEN = {
    "driver_hourly_stats": [(999999,), (5000000000,)],  # 5000000000 has a hash, but not this view's fields
    "driver_daily_stats": [(999999,)],
    "user_profile": [("nobody",)],
    "driver_city_stats": [(1001, "Berlin"), (1002, "Paris")],
}


def now_ms() -> int:
    return int(time.time() * 1000)


def join_key_names(view: str) -> list[str]:
    return [ENTITIES[e][0] for e in VIEWS[view][0]]


def entity_row(view: str, keys: tuple) -> dict:
    return dict(zip(join_key_names(view), keys))


def proxy_key(keys: tuple) -> str:
    return SEP.join(str(k) for k in keys)


def expected(view: str, values: tuple) -> dict:
    """Feature name -> the value Feast stores (Float32 rounded to float32), packed features only."""
    out = {}
    for (f, t), v in zip(VIEWS[view][1], values):
        if t != "String":
            out[f] = f32(v) if t == "Float32" else v
    return out


def same(a, b) -> bool:
    """Equal, and for floats also the same sign of zero."""
    if isinstance(a, float) or isinstance(b, float):
        return a == b and str(a).startswith("-") == str(b).startswith("-")
    return a == b and type(a) is type(b)


def feast_values(store, view: str, keys_list: list[tuple]) -> list[tuple[dict, int | None]]:
    feats = [f for f, _ in VIEWS[view][1]]
    return feastrepo.feast_read(store, view, feats, [entity_row(view, k) for k in keys_list])


def write_with_feast(store, rows, base_ms: int) -> None:
    by_view: dict[str, list] = {}
    for r in rows:
        by_view.setdefault(r[0], []).append(r)
    for view, vrows in by_view.items():
        ents, feats, _ = VIEWS[view]
        dtypes = {ENTITIES[e][0]: NUMPY[ENTITIES[e][1]] for e in ents} | {f: NUMPY[t] for f, t in feats}
        data = []
        for _, keys, age, values in vrows:
            d = entity_row(view, keys) | {f: v for (f, _), v in zip(feats, values)}
            d["ts_ms"] = base_ms - age
            data.append(d)
        store.write_to_online_store(view, feastrepo.frame(data, dtypes))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Redis with Feast's rows, the Feast repo, and the exported featureproxy config (with real defaults)."""
    from feast import Entity, FeatureStore, FeatureView, Field, ValueType
    from feast import types as ft

    redis = RedisServer()
    try:
        project = f"e2e_{uuid.uuid4().hex[:8]}"
        repo = feastrepo.write_repo(tmp_path_factory.mktemp("feast-e2e") / "repo", project, feastrepo.redis_online_store(redis.port))
        vt = {"Int64": ValueType.INT64, "String": ValueType.STRING}
        entities = {n: Entity(name=n, join_keys=[jk], value_type=vt[t]) for n, (jk, t) in ENTITIES.items()}
        views = [
            FeatureView(
                name=name,
                entities=[entities[e] for e in ents],
                schema=[Field(name=f, dtype=getattr(ft, t)) for f, t in feats],
                ttl=ttl,
                source=feastrepo.source(repo, f"{name}_src"),
            )
            for name, (ents, feats, ttl) in VIEWS.items()
        ]
        store = FeatureStore(repo_path=str(repo))
        store.apply([*entities.values(), *views])
        base = now_ms()
        write_with_feast(store, ROWS, base)

        proc = subprocess.run(
            [sys.executable, "-m", "featureproxy.feast_export", "--repo", str(repo)],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        exported = tomllib.loads(proc.stdout)
        config = copy.deepcopy(exported["view"])
        for v in config:
            for f in v["features"]:
                f["default"] = DEFAULTS[v["name"]][f["name"]]
        yield SimpleNamespace(redis=redis, repo=repo, project=project, store=store, base=base,
                              export_text=proc.stdout, exported=exported, config=config)
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def fp(world, proxy_binary):
    """The proxy serving the exported config, on the Redis Feast wrote; and a client."""
    px = ProxyProcess(proxy_binary, world.redis, feastrepo.views_toml(world.config))
    client = featureproxy.Client("127.0.0.1", px.port, timeout=5.0)
    yield client
    client.close()
    px.stop()


def test_feast_wrote_and_reads_back_and_export_matches(world):
    """The Feast side alone: what Feast reads back equals what it was given, and the export describes it."""
    for view in VIEWS:
        rows = [r for r in ROWS if r[0] == view]
        got = feast_values(world.store, view, [r[1] for r in rows])
        for (_, keys, age, values), (vals, ts) in zip(rows, got):
            want = expected(view, values)
            assert all(same(vals[f], want[f]) for f in want), (view, keys, vals, want)
            assert ts == world.base - age  # Feast keeps the event timestamp to the millisecond
        # Feast does not check the view's ttl online: the expired rows above came back with their values.
        missing = feast_values(world.store, view, NEVER_WRITTEN[view])
        assert all(v is None for vals, _ in missing for v in vals.values())

    views = {v["name"]: v for v in world.exported["view"]}
    assert set(views) == set(VIEWS)
    for name, (ents, feats, ttl) in VIEWS.items():
        v = views[name]
        assert v["layout"] == "feast" and "ttl" not in v and "version" not in v
        assert v["feast"] == {
            "project": world.project,
            "join_keys": [{"name": ENTITIES[e][0], "dtype": ENTITIES[e][1].lower()} for e in ents],
        }
        assert [f["name"] for f in v["features"]] == PACKED[name]
    assert (views["driver_hourly_stats"]["stale_after"], views["driver_hourly_stats"]["max_staleness"]) == ("12h", "1d")
    assert (views["user_profile"]["stale_after"], views["user_profile"]["max_staleness"]) == ("3h", "6h")
    assert "key_ttl_seconds" not in world.export_text  # the repo's online store sets no EXPIRE
    assert '# skipped feature "nickname": Feast type String cannot be packed into a fixed-width row' in world.export_text
    assert [f["dtype"] for f in views["driver_hourly_stats"]["features"]] == ["f32", "f64", "i32", "i64", "bool"]
    assert [f["default"] for f in world.config[[v["name"] for v in world.config].index("user_profile")]["features"]] == [
        0.5, 30, -2, True]


def status_for(age_ms: int, view: str) -> Status:
    ttl = VIEWS[view][2] // dt.timedelta(milliseconds=1)
    if age_ms > ttl:
        return Status.EXPIRED
    return Status.STALE if age_ms > ttl // 2 else Status.FRESH


@pytest.mark.parametrize("view", list(VIEWS))
def test_proxy_serves_what_feast_wrote(world, fp, view):
    rows = [r for r in ROWS if r[0] == view]
    keys = [r[1] for r in rows] + NEVER_WRITTEN[view]
    feast_got = feast_values(world.store, view, keys)
    batch = fp.get(view, [proxy_key(k) for k in keys], bypass_cache=True, deadline=DL)
    assert len(batch) == len(keys)
    dicts = batch.to_dicts()
    assert list(dicts[0]) == PACKED[view]
    now = now_ms()
    for i, key in enumerate(keys):
        got = dicts[i]
        if i < len(rows):
            age = rows[i][2]
            status = status_for(age, view)
            assert batch.statuses[i] == status, (view, key, batch.statuses[i], status)
            if status is Status.EXPIRED:
                assert batch.defaulted[i] and got == DEFAULTS[view], (view, key, got)
                continue
            assert not batch.defaulted[i]
            feast_vals, feast_ts = feast_got[i]
            for f in PACKED[view]:
                ftype = dict(VIEWS[view][1])[f]
                want = f32(feast_vals[f]) if ftype == "Float32" else feast_vals[f]
                assert same(got[f], want), (view, key, f, got[f], want)
            assert all(same(got[f], v) for f, v in expected(view, rows[i][3]).items())
            # the age is measured from Feast's event timestamp
            assert feast_ts == world.base - age
            assert now - feast_ts - 5_000 <= batch.ages_ms[i] <= now - feast_ts + 5_000, (batch.ages_ms[i], now - feast_ts)
        else:
            assert batch.statuses[i] == Status.MISSING, (view, key, batch.statuses[i])
            assert batch.defaulted[i] and batch.ages_ms[i] is None
            assert got == DEFAULTS[view] and all(type(got[f]) is type(v) for f, v in DEFAULTS[view].items())


def test_shared_hash_views_are_independent(world, fp):
    """driver 1002: hourly stats FRESH, daily stats EXPIRED, in one Redis hash."""
    hourly = fp.get("driver_hourly_stats", ["1002", "1001"], bypass_cache=True, deadline=DL)
    daily = fp.get("driver_daily_stats", ["1002", "1001"], bypass_cache=True, deadline=DL)
    assert hourly.statuses == [Status.FRESH, Status.FRESH]
    assert daily.statuses == [Status.EXPIRED, Status.FRESH]
    assert hourly.to_dicts()[0] == {"conv_rate": 0.0, "acc_rate": 0.0, "avg_daily_trips": 0, "lifetime_trips": 0, "is_active": False}
    assert daily.to_dicts() == [DEFAULTS["driver_daily_stats"], {"rating": 4.75, "cancels": 12, "online": False}]


def test_put_through_proxy_is_read_by_feast(world, fp):
    t = now_ms() - 1_500
    hourly = {
        "2001": (t, {"conv_rate": 0.375, "acc_rate": -0.0, "avg_daily_trips": -12, "lifetime_trips": 2**40 + 1, "is_active": True}),
        "2002": (t - 1, {"conv_rate": -0.0, "acc_rate": 1e300, "avg_daily_trips": 0, "lifetime_trips": 0, "is_active": False}),
        # this entity's hash already holds Feast's driver_daily_stats row: it must stay
        "7000000001": (t - 2, {"conv_rate": 1.25, "acc_rate": 2.5, "avg_daily_trips": 3, "lifetime_trips": -4, "is_active": True}),
    }
    assert fp.put("driver_hourly_stats", hourly) == 3
    users = {"carol": (t, {"score": 0.625, "age": 41, "visits": -9, "premium": True})}
    assert fp.put("user_profile", users) == 1
    city = {f"3001{SEP}Rome": (t, {"trips": -8, "share": 0.0625})}
    assert fp.put("driver_city_stats", city) == 1

    got = feast_values(world.store, "driver_hourly_stats", [(2001,), (2002,), (7000000001,)])
    for (vals, ts), (key, (computed_at, want)) in zip(got, hourly.items()):
        assert ts == computed_at, (key, ts, computed_at)  # _ts:<view> holds computed_at, to the ms
        for f, v in want.items():
            assert same(f32(vals[f]) if f == "conv_rate" else vals[f], v), (key, f, vals[f], v)
    (daily, daily_ts), = feast_values(world.store, "driver_daily_stats", [(7000000001,)])
    assert daily == {"rating": 0.5, "cancels": 7, "online": False} and daily_ts == world.base - 7 * MIN

    (vals, ts), = feast_values(world.store, "user_profile", [("carol",)])
    assert ts == t and vals == {"score": 0.625, "age": 41, "visits": -9, "premium": True, "nickname": None}
    (vals, ts), = feast_values(world.store, "driver_city_stats", [(3001, "Rome")])
    assert ts == t and vals == {"trips": -8, "share": 0.0625}

    # and the proxy reads its own writes as Feast rows
    back = fp.get("driver_hourly_stats", list(hourly), bypass_cache=True, deadline=DL)
    assert back.statuses == [Status.FRESH] * 3
    assert back.to_dicts() == [v for _, v in hourly.values()]


def test_join_key_dtype_must_match_what_feast_wrote(world, proxy_binary):
    """Configured int32 while Feast wrote int64: a different Redis key, so nothing is found."""
    views = copy.deepcopy([v for v in world.config if v["name"] == "driver_hourly_stats"])
    views[0]["feast"]["join_keys"] = [{"name": "driver_id", "dtype": "int32"}]
    px = ProxyProcess(proxy_binary, world.redis, feastrepo.views_toml(views))
    try:
        with featureproxy.Client("127.0.0.1", px.port, timeout=5.0) as c:
            batch = c.get("driver_hourly_stats", ["1001", "1002", "-7"], bypass_cache=True, deadline=DL)
            assert batch.statuses == [Status.MISSING] * 3
            assert batch.to_dicts() == [DEFAULTS["driver_hourly_stats"]] * 3
    finally:
        px.stop()
