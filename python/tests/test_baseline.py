"""featureproxy.baseline: the file it writes, checked by hand and by the real proxy binary."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pandas as pd
import pytest

from featureproxy import baseline as bl

REGISTRY = """
[[view]]
name = "watched"
version = 1
ttl = "1d"
stale_after = "1m"
max_staleness = "5m"
baseline = "watched.json"
features = [
  { name = "a", dtype = "f32", default = 0.0 },
  { name = "c", dtype = "f64", default = 1.5 },
  { name = "d", dtype = "i64", default = 0 },
  { name = "m", dtype = "bool", default = false },
]
"""


def frame(n: int = 50_000) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    c = rng.normal(size=n)
    c[: n // 10] = 1.5  # a fill with the default
    return pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "c": c,
            "d": rng.negative_binomial(2, 0.33, size=n),
            "m": rng.random(n) < 0.3,
            "w": np.where(np.arange(n) % 2 == 0, 1.0, 3.0),
        }
    )


def test_shares_sum_to_one_and_point_masses_get_bins_of_their_own():
    f = bl.feature_baseline(frame()["c"].to_numpy(), "f64", 1.5)
    assert abs(sum(f["expected"]) - 1) < 1e-6
    assert len(f["expected"]) == len(f["edges"]) + 1
    i = f["edges"].index(1.5)
    assert f["expected"][i + 1] == pytest.approx(0.1, abs=1e-6), "the default's bin holds the fill alone"
    assert f["default_share"] == pytest.approx(0.1)
    assert f["zero_share"] == 0.0


def test_integers_sit_inside_bins_and_bools_have_two():
    df = frame()
    d = bl.feature_baseline(df["d"].to_numpy(), "i64", 0)
    assert all(e % 1 == 0.5 for e in d["edges"])
    assert d["zero_share"] == pytest.approx(float((df["d"] == 0).mean()))
    m = bl.feature_baseline(df["m"].to_numpy(), "bool", 0)
    assert m["edges"] == [0.5] and m["expected"][1] == pytest.approx(0.3, abs=0.01)


def test_weights_count_rows_as_training_does():
    x = np.array([0.0] * 50 + [1.0] * 50)
    w = np.array([1.0] * 50 + [3.0] * 50)
    f = bl.feature_baseline(x, "f64", 0.0, weights=w)
    assert f["zero_share"] == pytest.approx(0.25)
    with pytest.raises(bl.BaselineError, match="weights"):
        bl.feature_baseline(x, "f64", 0.0, weights=-w)


def test_nulls_are_binned_as_the_default_and_counted():
    f = bl.feature_baseline(np.array([np.nan, 2.0, 3.0, np.nan]), "f64", 0.0)
    assert f["null_share"] == 0.5 and f["zero_share"] == 0.5


def test_the_proxy_accepts_the_file_and_refuses_a_broken_one(tmp_path, proxy_binary):
    config = tmp_path / "features.toml"
    config.write_text(REGISTRY)
    out = tmp_path / "watched.json"
    df = frame()
    df.to_parquet(tmp_path / "train.parquet")
    rc = bl.main(["--registry", str(config), "--view", "watched", "--data", str(tmp_path / "train.parquet"), "--weights", "w", "--out", str(out)])
    assert rc == 0
    written = json.loads(out.read_text())
    assert set(written["views"]["watched"]["features"]) == {"a", "c", "d", "m"}
    ok = subprocess.run([str(proxy_binary), "check", "--config", str(config)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr

    written["views"]["watched"]["features"]["d"]["expected"].pop()
    out.write_text(json.dumps(written))
    bad = subprocess.run([str(proxy_binary), "check", "--config", str(config)], capture_output=True, text=True)
    assert bad.returncode != 0
    assert 'view "watched": baseline' in bad.stderr and 'feature "d"' in bad.stderr and "bins" in bad.stderr, bad.stderr


def test_a_schema_id_ties_the_file_to_the_view_it_was_made_for(tmp_path, proxy_binary):
    config = tmp_path / "features.toml"
    config.write_text(REGISTRY)
    out = tmp_path / "watched.json"
    (tmp_path / "train.csv").write_text(frame(2000).to_csv(index=False))
    bl.main(["--registry", str(config), "--view", "watched", "--data", str(tmp_path / "train.csv"), "--out", str(out)])
    check = subprocess.run([str(proxy_binary), "check", "--config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    schema_id = re.search(r"view watched .* schema_id (0x[0-9a-f]{8})", check.stdout).group(1)

    args = ["--registry", str(config), "--view", "watched", "--data", str(tmp_path / "train.csv"), "--out", str(out)]
    assert bl.main(args + ["--schema-id", schema_id]) == 0
    assert json.loads(out.read_text())["views"]["watched"]["schema_id"] == int(schema_id, 16)
    ok = subprocess.run([str(proxy_binary), "check", "--config", str(config)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr

    # The view's default for c changes: the baseline made for the old schema is refused.
    config.write_text(REGISTRY.replace("default = 1.5", "default = 2.5"))
    bad = subprocess.run([str(proxy_binary), "check", "--config", str(config)], capture_output=True, text=True)
    assert bad.returncode != 0
    assert f"made for schema_id {int(schema_id, 16)}" in bad.stderr and "make the baseline again" in bad.stderr, bad.stderr


def test_an_unknown_view_is_named(tmp_path):
    config = tmp_path / "features.toml"
    config.write_text(REGISTRY)
    with pytest.raises(bl.BaselineError, match="no view 'nope' \\(views: watched\\)"):
        bl.build(frame(10), str(config), "nope")
