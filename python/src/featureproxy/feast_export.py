"""featureproxy views for a Feast repo's feature views, as TOML (``layout = "feast"``).

    python -m featureproxy.feast_export --repo PATH [--view NAME ...] > feast-views.toml

Loads ``feast.FeatureStore(repo_path=PATH)`` (so it needs the feast package: ``pip install 'feast[redis]'``), and
prints one ``[[view]]`` per Feast feature view (only the named ones with ``--view``). Such a view reads and writes
the rows Feast's Redis online store holds, unchanged: key ``serialize_entity_key(v3) ++ project``, one hash field
per feature, ``_ts:<view>`` for the event timestamp.

What it cannot decide for you is written as a comment next to the value: the defaults (served whenever no usable
value is stored: set them to the values the model was trained with), ``stale_after`` (half of ``max_staleness``),
and ``ttl`` (the EXPIRE featureproxy sets on PUT; Feast's ``key_ttl_seconds``, when the repo has one).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import re
import sys
from typing import Any, Iterable

__all__ = ["export", "main"]

INSTALL_HINT = "pip install 'feast[redis]'"
MAX_STALENESS_MS = 48 * 86_400_000  # the longest featureproxy accepts: under 49 days, as u32 ms on the wire
_VIEW_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}\Z")

# Feast ValueType names -> featureproxy dtypes
_JOIN_KEY_DTYPES = {"INT64": "int64", "INT32": "int32", "STRING": "string", "BYTES": "bytes"}
_FEATURE_DTYPES = {"FLOAT": "f32", "DOUBLE": "f64", "INT32": "i32", "INT64": "i64", "BOOL": "bool"}
_DEFAULTS = {"f32": "0.0", "f64": "0.0", "i32": "0", "i64": "0", "bool": "false"}
_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1))


class ExportError(Exception):
    """A problem to report to the user (exit status 1)."""


def toml_str(s: str) -> str:
    """s as a TOML basic string."""
    out = []
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def duration(ms: int) -> str:
    """Milliseconds as a featureproxy duration in the largest unit that is exact ("1d", "12h", "90s", "1500ms")."""
    for unit, size in _UNITS:
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _ms(td: _dt.timedelta) -> int:
    return td // _dt.timedelta(milliseconds=1)


def _type_name(dtype: Any) -> str:
    """A Feast type's name as Feast's SDK writes it (Float32, String, Array(Int64), ...)."""
    text = str(dtype)
    return text if text and not text.startswith("<") else repr(dtype)


def _value_type_name(dtype: Any) -> str | None:
    """The ValueType name (FLOAT, INT64, ...) of a Feast type, or None when it has none."""
    try:
        return dtype.to_value_type().name
    except Exception:  # complex types without a ValueType
        return None


def _join_keys(store: Any, fv: Any) -> tuple[list[tuple[str, str]], str | None]:
    """[(join key, featureproxy dtype)] in the order the view's entities declare them, or (.., why skipped)."""
    columns = {c.name: c for c in getattr(fv, "entity_columns", None) or []}
    out: list[tuple[str, str]] = []
    if not fv.entities:
        return out, "it has no entities (Feast stores it under a dummy entity key)"
    for entity_name in fv.entities:
        entity = store.get_entity(entity_name)
        jk = entity.join_key
        if jk in columns:
            vt_name = _value_type_name(columns[jk].dtype)
            shown = _type_name(columns[jk].dtype)
        else:
            vt_name = entity.value_type.name
            shown = vt_name
        dtype = _JOIN_KEY_DTYPES.get(vt_name or "")
        if dtype is None:
            return out, (
                f"join key {toml_str(jk)} (entity {toml_str(entity_name)}) has Feast type {shown}; "
                "featureproxy reads join keys of Feast types Int64, Int32, String and Bytes"
            )
        out.append((jk, dtype))
    return out, None


def _view_lines(store: Any, fv: Any, project: str, key_ttl_seconds: int | None, versioning: bool) -> list[str]:
    name = fv.name
    quoted = toml_str(name)
    if not getattr(fv, "online", True):
        return [f"# skipped view {quoted}: online = False, so Feast does not write it to the online store"]
    if not _VIEW_NAME.match(name):
        return [f"# skipped view {quoted}: featureproxy view names are 1 to 128 of A-Z a-z 0-9 _ - ."]
    if versioning:
        from feast.infra.online_stores.helpers import compute_versioned_name

        stored_as = compute_versioned_name(fv, True)
        if stored_as != name:
            return [
                f"# skipped view {quoted}: online feature view versioning is on, so Feast stores its fields as "
                f"{toml_str(stored_as)}, which featureproxy does not read"
            ]
    join_keys, why = _join_keys(store, fv)
    if why:
        return [f"# skipped view {quoted}: {why}"]

    features: list[tuple[str, str]] = []
    skipped: list[str] = []
    for field in fv.features:
        dtype = _FEATURE_DTYPES.get(_value_type_name(field.dtype) or "")
        if dtype is None:
            skipped.append(
                f"# skipped feature {toml_str(field.name)}: Feast type {_type_name(field.dtype)} "
                "cannot be packed into a fixed-width row"
            )
        elif not 1 <= len(field.name.encode("utf-8")) <= 255:
            skipped.append(f"# skipped feature {toml_str(field.name)}: featureproxy feature names are 1 to 255 bytes")
        else:
            features.append((field.name, dtype))
    if not features:
        return [
            f"# skipped view {quoted}: none of its features has a type featureproxy packs "
            "(Float32, Float64, Int32, Int64, Bool)",
            *skipped,
        ]

    ttl = fv.ttl
    ttl_ms = _ms(ttl) if ttl else 0
    if ttl_ms <= 0:
        max_ms, max_note = MAX_STALENESS_MS, "Feast's view has no ttl; 48d is the max we accept"
    elif ttl_ms > MAX_STALENESS_MS:
        max_ms, max_note = MAX_STALENESS_MS, f"Feast's ttl is {duration(ttl_ms)}; 48d is the max we accept"
    else:
        max_ms, max_note = ttl_ms, "from the Feast view's ttl"
    stale_ms = max_ms // 2 if max_ms >= 2 else max_ms

    lines = [
        "[[view]]",
        f"name = {quoted}  # the Feast feature view's name",
        'layout = "feast"',
        f'stale_after = "{duration(stale_ms)}"  # half of max_staleness: choose when a value should count as stale',
        f'max_staleness = "{duration(max_ms)}"  # {max_note}',
    ]
    if key_ttl_seconds:
        lines.append(
            f'# ttl = "{duration(key_ttl_seconds * 1000)}"  # the online store\'s key_ttl_seconds = {key_ttl_seconds}: '
            "uncomment to make PUT set the same EXPIRE (per entity key, across all its views)"
        )
    jk_text = ", ".join(f"{{ name = {toml_str(n)}, dtype = {toml_str(d)} }}" for n, d in join_keys)
    lines.append(f"feast = {{ project = {toml_str(project)}, join_keys = [{jk_text}] }}")
    lines.append("features = [")
    for fname, dtype in features:
        lines.append(
            f"  {{ name = {toml_str(fname)}, dtype = {toml_str(dtype)}, default = {_DEFAULTS[dtype]} }},"
            "  # set the training-time default"
        )
    lines.append("]")
    lines.extend(skipped)
    return lines


def _all_views(store: Any) -> dict[str, Any]:
    views: dict[str, Any] = {}
    for fv in list(store.list_feature_views()) + list(store.list_stream_feature_views()):
        views.setdefault(fv.name, fv)
    return views


def export(store: Any, names: Iterable[str] | None = None, repo: str | None = None) -> str:
    """The TOML for the store's feature views (all, sorted by name, or the named ones in the given order)."""
    import feast

    views = _all_views(store)
    if names:
        wanted = list(dict.fromkeys(names))
        unknown = [n for n in wanted if n not in views]
        if unknown:
            have = ", ".join(sorted(views)) or "(none)"
            raise ExportError(
                f"no feature view named {', '.join(map(repr, unknown))} in project {store.project!r}; "
                f"its feature views: {have}"
            )
        chosen = [views[n] for n in wanted]
    else:
        chosen = [views[n] for n in sorted(views)]

    config = store.config
    online = config.online_store
    online_type = getattr(online, "type", None) or type(online).__name__
    key_ttl = getattr(online, "key_ttl_seconds", None)
    versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
    esv = config.entity_key_serialization_version

    out = [
        f"# featureproxy views (layout \"feast\") for the Feast feature views of project {toml_str(store.project)}",
        f"# repo: {repo or store.repo_path}",
        f"# generated by featureproxy.feast_export (feast {feast.__version__})",
        "# Defaults are served whenever no usable value is stored: set each one to the value the model was trained with.",
    ]
    if online_type != "redis":
        out.append(f"# warning: the repo's online store is {toml_str(str(online_type))}, not redis")
    if esv != 3:
        out.append(
            f"# warning: the repo has entity_key_serialization_version = {esv}; featureproxy reads Feast's version 3 keys"
        )
    if not chosen:
        out.append("# the project has no feature views")
    for fv in chosen:
        out.append("")
        out.extend(_view_lines(store, fv, store.project, key_ttl, versioning))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m featureproxy.feast_export",
        description="Print featureproxy [[view]] tables (layout \"feast\") for a Feast repo's feature views.",
    )
    ap.add_argument("--repo", required=True, help="the Feast repo (the folder holding feature_store.yaml)")
    ap.add_argument("--view", action="append", metavar="NAME", help="only this feature view (repeatable)")
    args = ap.parse_args(argv)

    try:
        from feast import FeatureStore
    except ImportError as e:
        print(
            f"featureproxy.feast_export needs the feast package, which cannot be imported ({e}).\n"
            f"Install it with: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2

    try:
        store = FeatureStore(repo_path=args.repo)
        text = export(store, args.view, repo=args.repo)
    except ExportError as e:
        print(f"featureproxy.feast_export: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # Feast's own errors: no feature_store.yaml, a bad registry, ...
        print(f"featureproxy.feast_export: cannot read the Feast repo at {args.repo}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
