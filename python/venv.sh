#!/usr/bin/env bash
# Makes (or brings up to date) the virtualenv the Python tests use, and prints its python:
# the package, pytest, numpy, maturin and feast[redis] with its pinned dependencies (numpy,
# pandas, pyarrow among them). python/run-tests.sh uses it, and so does tests/monitoring.rs
# (the baseline helper needs numpy, pandas and pyarrow), which `cargo test` runs first.
#   FEATUREPROXY_VENV: where (default target/python-venv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
venv="${FEATUREPROXY_VENV:-$root/target/python-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$here" pytest numpy \
  "maturin>=1.9.4,<2" -r "$here/requirements-feast.txt" >&2
rm -rf "$here/build" "$here"/src/*.egg-info  # left by the in-tree build
echo "$venv/bin/python"
