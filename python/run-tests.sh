#!/usr/bin/env bash
# Tests of the Python client (python/): installs the package into a venv with pytest, numpy and
# feast[redis] (pinned, with all their dependencies, by python/requirements-feast.txt), builds the
# native core (python/native, the Rust client under PyO3) from source into the same venv, then
# runs python/tests twice, once per core (FEATUREPROXY_IMPL=native, then python), against the
# real proxy binary, a real redis-server and the real feast SDK.
# Run from anywhere; exits non-zero on any failure, including "no tests collected".
#
# FEATUREPROXY_NATIVE_PROFILE (default dev) is the cargo profile of the native build: dev reuses
# what `cargo test --workspace` built in target/debug (CI runs that first); release is what
# `pip install ./python/native` gives users and what benches/python_client.py measures.
# FEATUREPROXY_IMPLS (default "native python") says which passes to run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
cd "$root"

# The proxy binary under test: $FEATUREPROXY_BIN, else the debug build, rebuilt when missing or
# older than the sources (after `cargo test --workspace` it is already up to date).
if [ -z "${FEATUREPROXY_BIN:-}" ]; then
  bin="${CARGO_TARGET_DIR:-$root/target}/debug/featureproxy"
  if [ ! -x "$bin" ] || [ -n "$(find src protocol/src Cargo.toml Cargo.lock -newer "$bin" -print -quit 2>/dev/null)" ]; then
    echo "python/run-tests.sh: building target/debug/featureproxy"
    cargo build --bin featureproxy
  fi
  export FEATUREPROXY_BIN="$bin"
fi

venv="$(dirname "$(dirname "$("$here/venv.sh")")")"

# The native core, from source: maturin (in the venv, so no build isolation and no download)
# runs cargo on the workspace member python/native. MATURIN_NO_INSTALL_RUST: fail rather than
# fetch a toolchain.
profile="${FEATUREPROXY_NATIVE_PROFILE:-dev}"
echo "python/run-tests.sh: building the native core (python/native, cargo profile $profile)"
t0=$(date +%s)
PATH="$venv/bin:$PATH" MATURIN_NO_INSTALL_RUST=1 MATURIN_PEP517_ARGS="--profile $profile" \
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-build-isolation \
  --force-reinstall --no-deps "$here/native"
echo "python/run-tests.sh: native core built and installed in $(($(date +%s) - t0)) s"

# Run from the tests' directory so `import featureproxy` resolves to the installed package.
cd "$here/tests"
rc=0
for impl in ${FEATUREPROXY_IMPLS:-native python}; do
  echo "python/run-tests.sh: python/tests with FEATUREPROXY_IMPL=$impl"
  set +e
  FEATUREPROXY_IMPL="$impl" "$venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$here" \
    -c "$here/pyproject.toml" . "$@"
  one=$?
  set -e
  if [ "$one" -eq 5 ]; then
    echo "python/run-tests.sh: pytest collected no tests (FEATUREPROXY_IMPL=$impl)" >&2
  fi
  if [ "$one" -ne 0 ] && [ "$rc" -eq 0 ]; then
    rc=$one
  fi
done
exit "$rc"
