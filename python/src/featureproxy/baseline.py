"""Training baselines for featureproxy's value watching.

The proxy bins every sampled served value at the edges this module writes and scores drift
(PSI) against the shares of training rows in each bin, so the baseline must come from the rows
as the model was trained on them: after the training pipeline's own fillna, one row per training
example (or weighted like them), never one row per entity.

    python -m featureproxy.baseline --registry features.toml --view user_features \\
        --data train.parquet [--weights w] --out baselines/user_features.json

or from Python: ``write(frame, "features.toml", "user_features", "out.json")``. The file
format is described in the README, "Watching feature values". Needs numpy and pandas
(``pip install featureproxy[baseline]``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tomllib
from typing import Any

FORMAT_VERSION = 1
# Decile edges plus the 1st and 99th percentiles: ten bins of ~10% and two tails of ~1%.
QUANTILES = [0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99]
# A float value held by at least this share of rows (0, the default, a fill) gets a bin alone.
POINT_MASS = 0.05
DTYPES = ("f32", "f64", "i32", "i64", "bool")


class BaselineError(ValueError):
    """A registry, view or frame that cannot make a baseline; the message names what."""


def _np():
    try:
        import numpy as np
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BaselineError("featureproxy.baseline needs numpy and pandas: pip install 'featureproxy[baseline]'") from e
    return np


def _weighted_quantiles(x, w, qs):
    np = _np()
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], w[order]
    cum = np.cumsum(ws)
    cum /= cum[-1]
    idx = np.searchsorted(cum, qs, side="left")
    return xs[np.minimum(idx, len(xs) - 1)]


def feature_baseline(values, dtype: str, default: float, weights=None, point_mass: float = POINT_MASS) -> dict[str, Any]:
    """One feature's entry: bin edges and the (weighted) share of rows in each bin.

    ``values`` may hold NaN (a null in training): it is counted in ``null_share`` and binned as
    ``default``, which is what the proxy serves for a missing value.
    """
    np = _np()
    if dtype not in DTYPES:
        raise BaselineError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    raw = np.asarray(values, dtype="float64")
    if raw.size == 0:
        raise BaselineError("no rows")
    w = np.ones_like(raw) if weights is None else np.asarray(weights, dtype="float64")
    if w.shape != raw.shape or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise BaselineError("weights must be finite, non-negative, one per row and not all zero")
    null = np.isnan(raw)
    x = np.where(null, default, raw)
    if dtype == "f32":  # bin what the proxy will read: the f32 value, widened
        x = x.astype(np.float32).astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise BaselineError("infinite values: drop or fill them as training does")
    total = w.sum()
    if dtype == "bool":
        edges = np.array([0.5])
    else:
        edges = _weighted_quantiles(x, w, QUANTILES)
        if dtype in ("i32", "i64"):
            edges = np.floor(edges) + 0.5  # each integer wholly inside one bin
        else:
            vals, inv = np.unique(x, return_inverse=True)
            share = np.bincount(inv, weights=w) / total
            for v in vals[share >= point_mass]:
                edges = np.append(edges, [v, np.nextafter(v, np.inf)])
        edges = np.unique(edges)
    bins = np.searchsorted(edges, x, side="right")
    expected = np.bincount(bins, weights=w, minlength=len(edges) + 1) / total
    mean = float(np.average(x, weights=w))
    return {
        "dtype": dtype,
        "n": int(raw.size),
        "null_share": float(w[null].sum() / total),
        "zero_share": float(w[x == 0].sum() / total),
        "default_share": float(w[x == default].sum() / total),
        "mean": mean,
        "std": float(math.sqrt(np.average((x - mean) ** 2, weights=w))),
        "min": float(x.min()),
        "max": float(x.max()),
        "edges": [float(e) for e in edges],
        "expected": [round(float(p), 8) for p in expected],
    }


def registry_view(registry_path: str, view: str) -> list[dict[str, Any]]:
    """The features of ``view`` in the registry (config) file: name, dtype, default as a number."""
    with open(registry_path, "rb") as f:
        config = tomllib.load(f)
    views = config.get("view", [])
    for v in views:
        if v.get("name") == view:
            out = []
            for feat in v.get("features", []):
                d = feat["default"]
                out.append({"name": feat["name"], "dtype": feat["dtype"], "default": float(d)})
            return out
    names = ", ".join(v.get("name", "?") for v in views) or "none"
    raise BaselineError(f"{registry_path}: no view {view!r} (views: {names})")


def build(
    frame,
    registry_path: str,
    view: str,
    weights: str | None = None,
    source: str | None = None,
    schema_id: int | None = None,
) -> dict[str, Any]:
    """The baseline file (as a dict) for ``view`` from the training DataFrame ``frame``: one
    entry per feature of the view that is a column of the frame. With ``schema_id`` (the view's,
    as ``featureproxy check`` prints it) the proxy refuses the file once the view's version,
    features or defaults change, instead of comparing traffic with a stale training set."""
    features = registry_view(registry_path, view)
    w = None
    if weights is not None:
        if weights not in frame.columns:
            raise BaselineError(f"no weights column {weights!r} in the frame")
        w = frame[weights].to_numpy()
    entries = {}
    for f in features:
        if f["name"] not in frame.columns:
            continue
        try:
            entries[f["name"]] = feature_baseline(frame[f["name"]].to_numpy(), f["dtype"], f["default"], w)
        except BaselineError as e:
            raise BaselineError(f"view {view!r}, feature {f['name']!r}: {e}") from None
    if not entries:
        raise BaselineError(f"view {view!r}: none of its features is a column of the frame")
    out: dict[str, Any] = {"version": FORMAT_VERSION, "weighting": weights or "training rows"}
    if source:
        out["source"] = source
    entry: dict[str, Any] = {}
    if schema_id is not None:
        if not 1 <= schema_id < 2**32:
            raise BaselineError(f"schema_id {schema_id} is not a view's schema_id (1 to 2^32-1)")
        entry["schema_id"] = schema_id
    entry["features"] = entries
    out["views"] = {view: entry}
    return out


def write(
    frame,
    registry_path: str,
    view: str,
    out_path: str,
    weights: str | None = None,
    source: str | None = None,
    schema_id: int | None = None,
) -> dict[str, Any]:
    """Builds the baseline and writes it to ``out_path``; returns it."""
    baseline = build(frame, registry_path, view, weights, source, schema_id)
    with open(out_path, "w") as f:
        json.dump(baseline, f, indent=1, allow_nan=False)
        f.write("\n")
    return baseline


def _read_frame(path: str):
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover
        raise BaselineError("featureproxy.baseline needs pandas: pip install 'featureproxy[baseline]'") from e
    if path.endswith(".parquet"):
        return pd.read_parquet(path)
    if path.endswith(".csv"):
        return pd.read_csv(path)
    raise BaselineError(f"{path}: give a .parquet or .csv file")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m featureproxy.baseline", description=__doc__.split("\n\n")[0])
    p.add_argument("--registry", required=True, help="the proxy's config file (its [[view]] tables)")
    p.add_argument("--view", required=True)
    p.add_argument("--data", required=True, help="training rows, .parquet or .csv, after the pipeline's fillna")
    p.add_argument("--weights", help="a column of row weights, when training weights rows")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--schema-id",
        type=lambda x: int(x, 0),
        help="the view's schema_id as `featureproxy check --config FILE` prints it (e.g. 0x1a2b3c4d): "
        "the proxy then refuses the file once the view's version, features or defaults change",
    )
    a = p.parse_args(argv)
    try:
        b = write(_read_frame(a.data), a.registry, a.view, a.out, a.weights, source=a.data, schema_id=a.schema_id)
    except (BaselineError, OSError) as e:
        print(f"featureproxy.baseline: {e}", file=sys.stderr)
        return 1
    n = len(b["views"][a.view]["features"])
    print(f"{a.out}: baseline of view {a.view!r}, {n} feature(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
