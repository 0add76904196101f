#!/usr/bin/env bash
# Tests of the Python client (python/): installs the package into a venv with pytest, numpy and
# feast[redis] (pinned, with all their dependencies, by python/requirements-feast.txt), then runs
# python/tests against the real proxy binary, a real redis-server and the real feast SDK.
# Run from anywhere; exits non-zero on any failure, including "no tests collected".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
cd "$root"

# The proxy binary under test: $FEATUREPROXY_BIN, else the debug build, rebuilt when missing or
# older than the sources (after `cargo test --workspace` it is already up to date).
if [ -z "${FEATUREPROXY_BIN:-}" ]; then
  bin="$root/target/debug/featureproxy"
  if [ ! -x "$bin" ] || [ -n "$(find src protocol/src Cargo.toml Cargo.lock -newer "$bin" -print -quit 2>/dev/null)" ]; then
    echo "python/run-tests.sh: building target/debug/featureproxy"
    cargo build --bin featureproxy
  fi
  export FEATUREPROXY_BIN="$bin"
fi

venv="${FEATUREPROXY_VENV:-$root/target/python-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$here" pytest numpy \
  -r "$here/requirements-feast.txt"
rm -rf "$here/build" "$here"/src/*.egg-info  # left by the in-tree build

# Run from the tests' directory so `import featureproxy` resolves to the installed package.
cd "$here/tests"
set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$here" -c "$here/pyproject.toml" . "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "python/run-tests.sh: pytest collected no tests" >&2
fi
exit "$rc"
