"""featureproxy.feast_export against Feast repos built with the real feast SDK (FeatureStore.apply)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import featureproxy

sys.path.insert(0, str(Path(__file__).resolve().parent / "feast"))
import feastrepo  # noqa: E402

import feast  # noqa: E402  (python/run-tests.sh installs it: python/requirements-feast.txt)


def run_export(*args: str, env: dict | None = None, python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-m", "featureproxy.feast_export", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd="/",
    )


def run_exports(runs: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Several exporter runs at once (each spends seconds importing feast)."""
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "featureproxy.feast_export", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        for name, args in runs.items()
    }
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        out[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return out


def build_repo(repo: Path, redis_port: int) -> None:
    from feast import Entity, FeatureStore, FeatureView, Field, ValueType
    from feast.types import Array, Bool, Bytes, Float32, Float64, Int32, Int64, String, UnixTimestamp

    feastrepo.write_repo(repo, "export_project", feastrepo.redis_online_store(redis_port, key_ttl_seconds=7200))
    driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
    city = Entity(name="city", join_keys=["city"], value_type=ValueType.STRING)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    device = Entity(name="device", join_keys=["device_id"], value_type=ValueType.INT32)
    session = Entity(name="session", join_keys=["session_key"], value_type=ValueType.BYTES)
    moment = Entity(name="moment", join_keys=["moment_ts"], value_type=ValueType.UNIX_TIMESTAMP)

    def fv(name, entities, schema, ttl, online=True):
        return FeatureView(
            name=name,
            entities=entities,
            schema=schema,
            ttl=ttl,
            online=online,
            source=feastrepo.source(repo, f"{name}_src"),
        )

    views = [
        fv(
            "driver_hourly_stats",
            [driver],
            [
                Field(name="conv_rate", dtype=Float32),
                Field(name="label", dtype=String),
                Field(name="acc_rate", dtype=Float64),
                Field(name="avg_daily_trips", dtype=Int32),
                Field(name="blob", dtype=Bytes),
                Field(name="lifetime_trips", dtype=Int64),
                Field(name="last_seen", dtype=UnixTimestamp),
                Field(name="is_active", dtype=Bool),
                Field(name="history", dtype=Array(Float32)),
            ],
            dt.timedelta(days=1),
        ),
        fv("user_profile", [user], [Field(name="score", dtype=Float32)], dt.timedelta(0)),
        # declared driver, city: the exporter keeps this order (Feast sorts by name only inside the key)
        fv(
            "driver_city_stats",
            [driver, city],
            [Field(name="trips", dtype=Int64), Field(name="share", dtype=Float64)],
            dt.timedelta(hours=3),
        ),
        fv(
            "device_session",
            [device, session],
            [Field(name="clicks", dtype=Int32)],
            dt.timedelta(days=100),
        ),
        fv("driver_names", [driver], [Field(name="name", dtype=String), Field(name="tags", dtype=Array(String))],
           dt.timedelta(days=1)),
        fv("by_moment", [moment], [Field(name="count", dtype=Int64)], dt.timedelta(days=1)),
        fv("offline_only", [driver], [Field(name="x", dtype=Float32)], dt.timedelta(days=1), online=False),
        fv("odd_ttl", [driver], [Field(name="y", dtype=Float32)], dt.timedelta(seconds=7)),
    ]
    FeatureStore(repo_path=str(repo)).apply([driver, city, user, device, session, moment, *views])


@pytest.fixture(scope="module")
def repo(tmp_path_factory, redis_server) -> Path:
    path = tmp_path_factory.mktemp("feast-export") / "repo"
    build_repo(path, redis_server.port)
    return path


@pytest.fixture(scope="module")
def runs(repo, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    empty = tmp_path_factory.mktemp("not-a-feast-repo")
    return run_exports(
        {
            "all": ["--repo", str(repo)],
            "filtered": ["--repo", str(repo), "--view", "user_profile", "--view", "driver_city_stats"],
            "unknown": ["--repo", str(repo), "--view", "user_profile", "--view", "nope", "--view", "gone"],
            "not_a_repo": ["--repo", str(empty)],
        }
    )


@pytest.fixture(scope="module")
def exported(runs) -> tuple[str, dict]:
    proc = runs["all"]
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, tomllib.loads(proc.stdout)


def by_name(doc: dict) -> dict[str, dict]:
    return {v["name"]: v for v in doc["view"]}


def test_header_and_emitted_views(exported, repo):
    text, doc = exported
    head = text.splitlines()[:4]
    assert head[0].startswith("# featureproxy views") and '"export_project"' in head[0]
    assert head[1] == f"# repo: {repo}"
    assert head[2] == f"# generated by featureproxy.feast_export (feast {feast.__version__})"
    assert "# warning" not in text  # a redis online store, entity_key_serialization_version 3
    # views sorted by name; skipped ones are comments only
    assert [v["name"] for v in doc["view"]] == ["device_session", "driver_city_stats", "driver_hourly_stats", "odd_ttl", "user_profile"]
    assert set(doc) == {"view"}
    for v in doc["view"]:
        assert v["layout"] == "feast"
        assert "version" not in v and "ttl" not in v
        assert set(v) == {"name", "layout", "stale_after", "max_staleness", "feast", "features"}
        assert v["feast"]["project"] == "export_project"
        assert set(v["feast"]) == {"project", "join_keys"}


def test_features_dtypes_defaults_and_skipped(exported):
    text, doc = exported
    v = by_name(doc)["driver_hourly_stats"]
    assert v["features"] == [
        {"name": "conv_rate", "dtype": "f32", "default": 0.0},
        {"name": "acc_rate", "dtype": "f64", "default": 0.0},
        {"name": "avg_daily_trips", "dtype": "i32", "default": 0},
        {"name": "lifetime_trips", "dtype": "i64", "default": 0},
        {"name": "is_active", "dtype": "bool", "default": False},
    ]
    assert type(v["features"][0]["default"]) is float and type(v["features"][2]["default"]) is int
    assert v["feast"]["join_keys"] == [{"name": "driver_id", "dtype": "int64"}]
    lines = text.splitlines()
    for name, ftype in [("label", "String"), ("blob", "Bytes"), ("last_seen", "UnixTimestamp"), ("history", "Array(Float32)")]:
        assert f'# skipped feature "{name}": Feast type {ftype} cannot be packed into a fixed-width row' in lines
    assert sum("# set the training-time default" in ln for ln in lines) == 5 + 2 + 1 + 1 + 1


def test_join_keys_in_declared_order_and_dtypes(exported):
    views = by_name(exported[1])
    assert views["driver_city_stats"]["feast"]["join_keys"] == [
        {"name": "driver_id", "dtype": "int64"},
        {"name": "city", "dtype": "string"},
    ]
    assert views["device_session"]["feast"]["join_keys"] == [
        {"name": "device_id", "dtype": "int32"},
        {"name": "session_key", "dtype": "bytes"},
    ]
    assert views["user_profile"]["feast"]["join_keys"] == [{"name": "user_id", "dtype": "string"}]
    assert views["driver_city_stats"]["features"] == [
        {"name": "trips", "dtype": "i64", "default": 0},
        {"name": "share", "dtype": "f64", "default": 0.0},
    ]


def test_staleness_from_the_feast_ttl(exported):
    text, doc = exported
    views = by_name(doc)
    got = {n: (v["stale_after"], v["max_staleness"]) for n, v in views.items()}
    assert got == {
        "driver_hourly_stats": ("12h", "1d"),
        "driver_city_stats": ("90m", "3h"),
        "user_profile": ("24d", "48d"),  # no ttl in Feast
        "device_session": ("24d", "48d"),  # ttl 100d, clamped
        "odd_ttl": ("3500ms", "7s"),
    }
    assert 'max_staleness = "48d"  # Feast\'s view has no ttl; 48d is the max we accept' in text
    assert "Feast's ttl is 100d; 48d is the max we accept" in text
    assert text.count("# half of max_staleness") == 5


def test_views_that_cannot_be_served_are_comments(exported):
    text, _ = exported
    lines = text.splitlines()
    assert any(ln.startswith('# skipped view "driver_names": none of its features') for ln in lines)
    assert '# skipped feature "name": Feast type String cannot be packed into a fixed-width row' in lines
    assert '# skipped feature "tags": Feast type Array(String) cannot be packed into a fixed-width row' in lines
    by_moment = [ln for ln in lines if ln.startswith('# skipped view "by_moment"')]
    assert len(by_moment) == 1 and '"moment_ts"' in by_moment[0] and "UnixTimestamp" in by_moment[0]
    assert any(ln.startswith('# skipped view "offline_only": online = False') for ln in lines)


def test_view_filter_keeps_the_given_order(runs):
    proc = runs["filtered"]
    assert proc.returncode == 0, proc.stderr
    doc = tomllib.loads(proc.stdout)
    assert [v["name"] for v in doc["view"]] == ["user_profile", "driver_city_stats"]
    assert "driver_hourly_stats" not in proc.stdout


def test_unknown_view_names_are_an_error_listing_the_views(runs):
    proc = runs["unknown"]
    assert proc.returncode == 1 and proc.stdout == ""
    assert "'nope', 'gone'" in proc.stderr
    for name in ("by_moment", "device_session", "driver_city_stats", "driver_hourly_stats", "user_profile"):
        assert name in proc.stderr


def test_key_ttl_seconds_is_a_comment(exported):
    text, doc = exported
    assert all("ttl" not in v for v in doc["view"])
    ttl_lines = [ln for ln in text.splitlines() if ln.startswith("# ttl = ")]
    assert len(ttl_lines) == len(doc["view"]) == 5
    assert all(ln.startswith('# ttl = "2h"  # ') and "key_ttl_seconds = 7200" in ln for ln in ttl_lines)


def test_not_a_feast_repo(runs):
    proc = runs["not_a_repo"]
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"cannot read the Feast repo at {proc.args[-1]}" in proc.stderr


def test_missing_feast_exits_2_with_the_install_hint(tmp_path):
    """A real interpreter without feast: a fresh venv (no pip, no packages) with a copy of featureproxy on PYTHONPATH."""
    lib = tmp_path / "lib"
    shutil.copytree(Path(featureproxy.__file__).resolve().parent, lib / "featureproxy")
    venv = tmp_path / "nofeast"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    # FEATUREPROXY_IMPL too: that interpreter has only the copied pure-Python package, so a forced
    # native core (python/run-tests.sh's first pass) would fail its import.
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "FEATUREPROXY_IMPL")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = str(lib)
    probe = subprocess.run([python, "-c", "import feast"], env=env, capture_output=True, text=True, cwd="/")
    assert probe.returncode == 1 and "No module named 'feast'" in probe.stderr  # the premise
    proc = run_export("--repo", str(tmp_path), env=env, python=python)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "pip install 'feast[redis]'" in proc.stderr
    assert "No module named 'feast'" in proc.stderr
