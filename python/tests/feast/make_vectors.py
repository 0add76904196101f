#!/usr/bin/env python3
"""Writes tests/data/feast_vectors.json: exactly what Feast's Redis online store writes, from the real feast package.

Run with a Python that has feast[redis] (python/requirements-feast.txt) and pytest installed, and redis-server on PATH:

    python python/tests/feast/make_vectors.py [--out tests/data/feast_vectors.json] [--check]

It starts its own redis-server on a free port, builds a throwaway Feast repo in a temp dir (provider local, online
store redis, entity_key_serialization_version 3, project "vec_project"), writes rows with
FeatureStore.write_to_online_store, reads them back with get_online_features (values must round-trip), and dumps
from Redis what Feast wrote. The inputs are fixed, so reruns give the same file byte for byte (--check: fail
instead of writing when the file on disk differs).

Schema of the JSON (all hex is lowercase, no separators; ints are JSON ints, floats JSON numbers; an f32 value
is the float32 value Feast stored, written as the exact double it widens to):

    {
      "generator": "python/tests/feast/make_vectors.py", "feast_version": "0.67.0",
      "entity_key_serialization_version": 3,
      "rows": [                      # one per row written with write_to_online_store, in write order
        {
          "project": "vec_project",
          "view": "driver_hourly_stats",             # Feast feature view name
          "join_keys": [                             # in the order the view's entities declare them
            {"name": "driver_id", "dtype": "Int64", "value": 1001}     # dtype: Int64 | Int32 | String
          ],
          "event_ts_ms": 1767323045678,              # the row's event timestamp, Unix ms
          "key_hex": "...",                          # the Redis key: serialize_entity_key(v3) ++ utf8(project)
          "ts_field": "_ts:driver_hourly_stats",     # the timestamp field's name (ASCII, used as is)
          "ts_value_hex": "...",                     # its value: google.protobuf.Timestamp (event ts)
          "features": [                              # in the view's schema order
            {"name": "conv_rate", "dtype": "Float32", "value": 0.5,
             "field_hex": "...",                     # _mmh3("<view>:<feature>"): 4 bytes
             "value_hex": "..."}                     # serialized feast.types.Value
          ],
          "ttl_seconds": null                        # the online store's key_ttl_seconds (EXPIRE), null: none
        }
      ],
      "hashes": [                    # Redis after all writes: one per key, HGETALL order (= insertion order)
        {"key_hex": "...", "ttl_seconds": null, "fields": [["<field hex>", "<value hex>"], ...]}
      ],
      "dedup": {...},                # a second, older write of one row that Feast skipped (hash unchanged)
      "direct": {                    # from feast's helpers directly, not through Redis
        "keys": [{"project", "join_keys": [...], "key_hex"}],   # serialize_entity_key(.., version=3) ++ project
        "fields": [{"name": "<view>:<feature>", "field_hex"}],  # feast.infra.online_stores.helpers._mmh3
        "values": [{"dtype", "value", "value_hex"}],           # ValueProto(..).SerializeToString()
        "timestamps": [{"seconds", "nanos", "value_hex"}]       # Timestamp(..).SerializeToString()
      }
    }

"ttl_seconds" on a hash is the configured key_ttl_seconds when Redis reports a TTL for the key (checked to be
within 60 s of it), null when the key has no expiry.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # python/tests, for conftest's RedisServer

import feastrepo  # noqa: E402
from feastrepo import f32, iso_ms  # noqa: E402

ROOT = HERE.parents[2]
DEFAULT_OUT = ROOT / "tests" / "data" / "feast_vectors.json"
PROJECT = "vec_project"
TTL_PROJECT = "vec_ttl_project"
KEY_TTL = 86400

T1 = iso_ms("2026-01-02T03:04:05.678Z")
T2 = iso_ms("2026-01-02T03:04:06.001Z")
T3 = iso_ms("2025-12-31T23:59:59.999Z")
T4 = iso_ms("2026-03-04T05:06:07.000Z")

# view -> (entity names in declaration order, [(feature, feast type name)], ttl)
VIEWS: dict[str, tuple[list[str], list[tuple[str, str]], dt.timedelta]] = {
    "driver_hourly_stats": (
        ["driver"],
        [
            ("conv_rate", "Float32"),
            ("acc_rate", "Float64"),
            ("avg_daily_trips", "Int32"),
            ("lifetime_trips", "Int64"),
            ("is_active", "Bool"),
        ],
        dt.timedelta(days=1),
    ),
    "driver_daily_stats": (
        ["driver"],
        [("rating", "Float64"), ("cancels", "Int32"), ("online", "Bool")],
        dt.timedelta(days=7),
    ),
    "user_profile": (
        ["user"],
        [("score", "Float32"), ("age", "Int32"), ("visits", "Int64"), ("premium", "Bool")],
        dt.timedelta(hours=6),
    ),
    # entities declared driver, city: Feast sorts join keys by name, so the key holds city first
    "driver_city_stats": (
        ["driver", "city"],
        [("trips", "Int64"), ("share", "Float32")],
        dt.timedelta(days=2),
    ),
}
ENTITIES = {"driver": ("driver_id", "Int64"), "user": ("user_id", "String"), "city": ("city", "String")}
NUMPY = {"Float32": "float32", "Float64": "float64", "Int32": "int32", "Int64": "int64", "Bool": "bool", "String": "object"}

# (view, join key values in declaration order, event ts ms, feature values in schema order)
ROWS: list[tuple[str, tuple, int, tuple]] = [
    ("driver_hourly_stats", (1001,), T1, (0.5, 0.5, 308, 123456789012, True)),
    ("driver_hourly_stats", (1002,), T1, (0.0, 0.0, 0, 0, False)),
    ("driver_hourly_stats", (1003,), T2, (-0.0, -0.0, -1, -1, True)),
    ("driver_hourly_stats", (1004,), T2, (f32(0.1), 0.1, -2147483648, -9223372036854775808, False)),
    ("driver_hourly_stats", (1005,), T3, (3.4028234663852886e38, 1e300, 2147483647, 9223372036854775807, True)),
    ("driver_hourly_stats", (-7,), T3, (-1.5, -123.456, -42, -5000000000, False)),
    ("driver_hourly_stats", (0,), T4, (1.0e-45, 5e-324, 1, 1, True)),
    ("driver_daily_stats", (1001,), T2, (4.75, 12, True)),  # same hash as driver_hourly_stats 1001
    ("driver_daily_stats", (1002,), T3, (0.0, 0, False)),
    ("driver_daily_stats", (9007199254740993,), T4, (-2.5, -3, True)),
    ("user_profile", ("alice",), T1, (0.75, 33, 1000, True)),
    ("user_profile", ("björk-用户",), T2, (-0.25, 0, 0, False)),
    ("user_profile", ("42",), T3, (0.0, -1, -1, False)),
    ("driver_city_stats", (1001, "Paris"), T1, (17, 0.125)),
    ("driver_city_stats", (1001, "Berlin"), T2, (0, 0.0)),
    ("driver_city_stats", (-5, "São Paulo"), T3, (-3, -0.5)),
]
TTL_ROWS: list[tuple[str, tuple, int, tuple]] = [
    ("driver_hourly_stats", (1001,), T1, (0.5, 0.5, 308, 123456789012, True)),
]


def feast_types():
    from feast import types

    return {n: getattr(types, n) for n in ("Float32", "Float64", "Int32", "Int64", "Bool", "String")}


def definitions(repo: Path) -> tuple[dict, dict]:
    from feast import Entity, FeatureView, Field, ValueType

    vt = {"Int64": ValueType.INT64, "String": ValueType.STRING}
    types = feast_types()
    entities = {n: Entity(name=n, join_keys=[jk], value_type=vt[t]) for n, (jk, t) in ENTITIES.items()}
    views = {}
    for name, (ents, feats, ttl) in VIEWS.items():
        views[name] = FeatureView(
            name=name,
            entities=[entities[e] for e in ents],
            ttl=ttl,
            schema=[Field(name=f, dtype=types[t]) for f, t in feats],
            source=feastrepo.source(repo, f"{name}_source"),
            online=True,
        )
    return entities, views


def make_store(repo: Path, project: str, port: int, **online: Any):
    from feast import FeatureStore

    feastrepo.write_repo(repo, project, feastrepo.redis_online_store(port, **online))
    store = FeatureStore(repo_path=str(repo))
    entities, views = definitions(repo)
    store.apply([*entities.values(), *views.values()])
    return store


def write_rows(store, rows) -> None:
    by_view: dict[str, list] = {}
    for r in rows:
        by_view.setdefault(r[0], []).append(r)
    for view, vrows in by_view.items():
        ents, feats, _ = VIEWS[view]
        cols, dtypes = [], {}
        for e in ents:
            jk, t = ENTITIES[e]
            dtypes[jk] = NUMPY[t]
        for f, t in feats:
            dtypes[f] = NUMPY[t]
        for _, keys, ts, values in vrows:
            d = {ENTITIES[e][0]: k for e, k in zip(ents, keys)}
            d.update({f: v for (f, _), v in zip(feats, values)})
            d["ts_ms"] = ts
            cols.append(d)
        store.write_to_online_store(view, feastrepo.frame(cols, dtypes))


def entity_key_proto(view: str, keys: tuple):
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    names, values = [], []
    for e, k in zip(VIEWS[view][0], keys):
        jk, t = ENTITIES[e]
        names.append(jk)
        values.append(Value(int64_val=k) if t == "Int64" else Value(string_val=k))
    return EntityKey(join_keys=names, entity_values=values)


def value_proto(dtype: str, v: Any):
    from feast.protos.feast.types.Value_pb2 import Value

    attr = {"Float32": "float_val", "Float64": "double_val", "Int32": "int32_val", "Int64": "int64_val", "Bool": "bool_val"}
    return Value(**{attr[dtype]: v})


def json_value(dtype: str, v: Any) -> Any:
    if dtype == "Float32":
        v = f32(v)
    if isinstance(v, float):
        assert math.isfinite(v)
    return v


def check_reads(store, rows) -> None:
    """Feast reads back every row it wrote (float32 compared as float32)."""
    for view, keys, _, values in rows:
        ents, feats, _ = VIEWS[view]
        entity = {ENTITIES[e][0]: k for e, k in zip(ents, keys)}
        got = feastrepo.online_values(store, [f"{view}:{f}" for f, _ in feats], [entity])[0]
        for (f, t), v in zip(feats, values):
            want = json_value(t, v)
            have = got[f]
            if t == "Float32":
                have = f32(have)
            assert have == want and math.copysign(1, have) == math.copysign(1, want) if isinstance(want, float) else have == want, (
                view, keys, f, have, want)


def dump_row(r, redis, project: str, ttl: int | None) -> dict:
    from google.protobuf.timestamp_pb2 import Timestamp

    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import _mmh3

    view, keys, ts, values = r
    ents, feats, _ = VIEWS[view]
    key = serialize_entity_key(entity_key_proto(view, keys), entity_key_serialization_version=3) + project.encode()
    stored = redis.hgetall(key)
    assert stored, f"no hash at {key.hex()} for {r}"
    ts_field = f"_ts:{view}"
    stamp = Timestamp()
    stamp.ParseFromString(stored[ts_field.encode()])
    assert stamp.seconds * 1000 + stamp.nanos // 1_000_000 == ts and stamp.nanos % 1_000_000 == 0, (r, stamp)
    out_feats = []
    for (f, t), v in zip(feats, values):
        field = _mmh3(f"{view}:{f}")
        raw = stored[field]
        assert raw == value_proto(t, json_value(t, v)).SerializeToString(), (r, f, raw.hex())
        out_feats.append({"name": f, "dtype": t, "value": json_value(t, v), "field_hex": field.hex(), "value_hex": raw.hex()})
    return {
        "project": project,
        "view": view,
        "join_keys": [
            {"name": ENTITIES[e][0], "dtype": ENTITIES[e][1], "value": k} for e, k in zip(ents, keys)
        ],
        "event_ts_ms": ts,
        "key_hex": key.hex(),
        "ts_field": ts_field,
        "ts_value_hex": stored[ts_field.encode()].hex(),
        "features": out_feats,
        "ttl_seconds": ttl,
    }


def dump_hashes(redis, ttl_by_project: dict[str, int | None]) -> list[dict]:
    out = []
    for key in sorted(redis.keys("*")):
        project = next(p for p in sorted(ttl_by_project, key=len, reverse=True) if key.endswith(p.encode()))
        want = ttl_by_project[project]
        pttl = redis.pttl(key)
        if want is None:
            assert pttl == -1, (key.hex(), pttl)
        else:
            assert want * 1000 - 60_000 < pttl <= want * 1000, (key.hex(), pttl)
        fields = [[bytes(f).hex(), bytes(v).hex()] for f, v in redis.hgetall(key).items()]
        out.append({"key_hex": key.hex(), "ttl_seconds": want, "fields": fields})
    return out


def direct() -> dict:
    from google.protobuf.timestamp_pb2 import Timestamp

    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import _mmh3
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    def key(project: str, jks: list[tuple[str, str, Any]]) -> dict:
        ek = EntityKey(
            join_keys=[n for n, _, _ in jks],
            entity_values=[
                {"Int64": lambda v: Value(int64_val=v), "Int32": lambda v: Value(int32_val=v),
                 "String": lambda v: Value(string_val=v)}[t](v)
                for _, t, v in jks
            ],
        )
        b = serialize_entity_key(ek, entity_key_serialization_version=3) + project.encode()
        return {"project": project, "join_keys": [{"name": n, "dtype": t, "value": v} for n, t, v in jks], "key_hex": b.hex()}

    keys = [
        key("feature_repo", [("driver_id", "Int64", 1001)]),
        key("feature_repo", [("driver_id", "Int32", 1001)]),  # a different key: the dtype is part of it
        key("vec_project", [("user_id", "String", "alice")]),
        key("vec_project", [("driver_id", "Int64", 1001), ("city", "String", "Paris")]),  # sorted: city first
    ]
    # The worked example of /work/shared/notes/feature-serving-anchors.md section 4.4.
    note_key = (
        "01000000" "02000000" "09000000" + b"driver_id".hex() + "04000000" "08000000" "e903000000000000" + b"feature_repo".hex()
    )
    assert keys[0]["key_hex"] == note_key, keys[0]["key_hex"]
    fields = [
        {"name": n, "field_hex": _mmh3(n).hex()}
        for n in ("driver_hourly_stats:conv_rate", "driver_hourly_stats:acc_rate", "driver_hourly_stats:avg_daily_trips", "user_profile:score")
    ]
    assert fields[0]["field_hex"] == "6160e3da", fields[0]
    vals = [
        ("Float64", 0.5), ("Float32", 0.5), ("Int64", 308), ("Int64", 0), ("Int64", -1), ("Int32", -1),
        ("Int32", 0), ("Bool", True), ("Bool", False), ("Float64", 0.0), ("Float64", -0.0),
    ]
    values = [{"dtype": t, "value": v, "value_hex": value_proto(t, v).SerializeToString().hex()} for t, v in vals]
    assert values[0]["value_hex"] == "29000000000000e03f" and values[1]["value_hex"] == "350000003f"
    assert values[2]["value_hex"] == "20b402"
    stamps = []
    for s, n in ((1700000000, 0), (T1 // 1000, (T1 % 1000) * 1_000_000), (0, 0)):
        stamps.append({"seconds": s, "nanos": n, "value_hex": Timestamp(seconds=s, nanos=n).SerializeToString().hex()})
    assert stamps[0]["value_hex"] == "0880e2cfaa06"
    return {"keys": keys, "fields": fields, "values": values, "timestamps": stamps}


def render(obj: Any, indent: int = 0) -> str:
    """JSON with containers of scalars (and [field, value] pairs) on one line."""
    pad = "  " * indent

    def flat(o: Any) -> bool:
        if isinstance(o, dict):
            return all(not isinstance(v, (dict, list)) for v in o.values())
        if isinstance(o, list):
            return all(not isinstance(v, (dict, list)) for v in o)
        return True

    if flat(obj) or (isinstance(obj, dict) and set(obj) == {"name", "dtype", "value"}):
        return json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, list) and all(isinstance(v, dict) and set(v) == {"name", "dtype", "value"} for v in obj):
        return json.dumps(obj, ensure_ascii=False)
    inner = "  " * (indent + 1)
    if isinstance(obj, dict):
        parts = [f"{inner}{json.dumps(k)}: {render(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(parts) + "\n" + pad + "}"
    parts = [inner + render(v, indent + 1) for v in obj]
    return "[\n" + ",\n".join(parts) + "\n" + pad + "]"


def build() -> dict:
    import redis as redispy

    import feast
    from conftest import RedisServer

    server = RedisServer()
    try:
        r = redispy.Redis(host="127.0.0.1", port=server.port)
        with tempfile.TemporaryDirectory(prefix="fp-feast-vectors-") as tmp:
            store = make_store(Path(tmp) / "repo", PROJECT, server.port)
            write_rows(store, ROWS)
            check_reads(store, ROWS)
            ttl_store = make_store(Path(tmp) / "ttl_repo", TTL_PROJECT, server.port, key_ttl_seconds=KEY_TTL)
            write_rows(ttl_store, TTL_ROWS)
            check_reads(ttl_store, TTL_ROWS)
            rows = [dump_row(x, r, PROJECT, None) for x in ROWS] + [dump_row(x, r, TTL_PROJECT, KEY_TTL) for x in TTL_ROWS]

            # Dedup: an older write of a row already stored is skipped by Feast (the hash is unchanged).
            first = ROWS[0]
            key = bytes.fromhex(rows[0]["key_hex"])
            before = r.hgetall(key)
            older = (first[0], first[1], first[2] - 1000, (9.0, 9.0, 9, 9, False))
            write_rows(store, [older])
            assert r.hgetall(key) == before, "Feast overwrote a newer row with an older one"
            dedup = {
                "note": "write_to_online_store of an older row (event ts 1 s earlier, other values): Feast skips it",
                "key_hex": rows[0]["key_hex"],
                "older_event_ts_ms": older[2],
                "hash_unchanged": True,
            }
            hashes = dump_hashes(r, {PROJECT: None, TTL_PROJECT: KEY_TTL})
        return {
            "generator": "python/tests/feast/make_vectors.py",
            "feast_version": feast.__version__,
            "entity_key_serialization_version": 3,
            "rows": rows,
            "hashes": hashes,
            "dedup": dedup,
            "direct": direct(),
        }
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--check", action="store_true", help="fail when the file differs instead of writing it")
    args = ap.parse_args()
    text = render(build()) + "\n"
    if args.check:
        have = args.out.read_text() if args.out.exists() else ""
        if have != text:
            print(f"{args.out} is out of date; rerun {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
