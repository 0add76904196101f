"""Helpers shared by make_vectors.py and the Feast tests: throwaway Feast repos built with the real SDK.

No __init__.py lives in this folder on purpose: a package named ``feast`` here would shadow the real
``feast`` package for code run from python/tests. Import this module by putting this folder on
sys.path (``sys.path.insert(0, str(Path(__file__).parent / "feast"))``).
"""

from __future__ import annotations

import datetime as dt
import struct
from pathlib import Path
from typing import Any

UTC = dt.timezone.utc


def write_repo(
    repo: Path,
    project: str,
    online_store: dict[str, Any],
    entity_key_serialization_version: int = 3,
) -> Path:
    """Writes feature_store.yaml (provider local, file registry under repo/data) and returns repo."""
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "data").mkdir(exist_ok=True)
    lines = [
        f"project: {project}",
        "provider: local",
        f"registry: {repo / 'data' / 'registry.db'}",
        "online_store:",
    ]
    for k, v in online_store.items():
        lines.append(f"  {k}: {v}")
    lines += [
        "offline_store:",
        "  type: file",
        f"entity_key_serialization_version: {entity_key_serialization_version}",
        "",
    ]
    (repo / "feature_store.yaml").write_text("\n".join(lines))
    return repo


def redis_online_store(port: int, **extra: Any) -> dict[str, Any]:
    return {"type": "redis", "connection_string": f'"127.0.0.1:{port}"', **extra}


def source(repo: Path, name: str):
    """A FileSource that is never read (rows go straight to the online store)."""
    from feast import FileSource

    return FileSource(name=name, path=str(repo / "data" / f"{name}.parquet"), timestamp_field="event_timestamp")


def ts_ms(ms: int) -> dt.datetime:
    """An aware UTC datetime from unix milliseconds (exact: datetimes hold microseconds)."""
    return dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(milliseconds=ms)


def iso_ms(s: str) -> int:
    """'2026-01-02T03:04:05.678Z' -> unix ms."""
    d = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return (d - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(milliseconds=1)


def f32(x: float) -> float:
    """x rounded to float32, as a Python float."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def frame(rows: list[dict[str, Any]], dtypes: dict[str, str]):
    """A pandas DataFrame with explicit column dtypes (numpy names: int64, int32, float32, float64, bool,
    object) and an event_timestamp column from each row's "ts_ms"."""
    import pandas as pd

    cols: dict[str, Any] = {}
    for name, dtype in dtypes.items():
        cols[name] = pd.Series([r[name] for r in rows], dtype=dtype)
    cols["event_timestamp"] = pd.to_datetime([r["ts_ms"] for r in rows], unit="ms", utc=True)
    return pd.DataFrame(cols)


def online_values(store, refs: list[str], entity_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """get_online_features as one dict per entity row: feature name -> Python value (None when null)."""
    resp = store.get_online_features(features=refs, entity_rows=entity_rows).to_dict()
    n = len(entity_rows)
    return [{k: v[i] for k, v in resp.items()} for i in range(n)]


def feast_read(store, view: str, features: list[str], entity_rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int | None]]:
    """get_online_features of one view: per entity row, (feature name -> Python value or None, the event
    timestamp of the row in unix ms, None when Feast found nothing)."""
    resp = store.get_online_features(features=[f"{view}:{f}" for f in features], entity_rows=entity_rows)
    values = resp.to_dict()
    names = list(resp.proto.metadata.feature_names.val)
    out = []
    for i in range(len(entity_rows)):
        row = {f: values[f][i] for f in features}
        stamps = []
        for f in features:
            ts = resp.proto.results[names.index(f)].event_timestamps[i]
            stamps.append(ts.seconds * 1000 + ts.nanos // 1_000_000)
        assert len(set(stamps)) == 1, stamps  # one _ts per view and entity
        out.append((row, stamps[0] or None))
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        text = repr(v)
        assert text not in ("nan", "inf", "-inf")
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(v, str):
        return json_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def json_str(s: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML for the BMP; non-ASCII is kept as is)."""
    import json

    return json.dumps(s, ensure_ascii=False)


def views_toml(views: list[dict[str, Any]]) -> str:
    """featureproxy config text for [[view]] tables (the structure tomllib gives for the exporter's output)."""
    out = []
    for v in views:
        out.append("[[view]]")
        for k, x in v.items():
            if k == "features":
                out.append("features = [")
                out.extend(f"  {_toml_value(f)}," for f in x)
                out.append("]")
            else:
                out.append(f"{k} = {_toml_value(x)}")
        out.append("")
    return "\n".join(out)
