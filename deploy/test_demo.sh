#!/usr/bin/env bash
# ./demo on a machine without redis-server: it installs Redis when it can, and otherwise prints
# the exact command to run and exits non-zero, without hanging.
#
#   deploy/test_demo.sh            the fast cases (about 2 s; run by deploy/check.sh)
#   deploy/test_demo.sh --full     also runs the whole demo after a (simulated) install; builds
#                                  the release binaries first if they are not built (minutes)
#
# Nothing is installed or removed for real. Each case runs ./demo with a PATH made of symlinks
# to every command on this PATH except redis-server, redis-cli and the package tools (apt-get,
# dnf, brew, sudo), behind a folder of stubs: a package manager that logs its arguments and
# "installs" by linking redis-server into that PATH, a sudo, an `id` that says "not root", and a
# cargo that stops the demo at its build step (exit 3), which proves the demo got past Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

FULL=0
[ "${1:-}" = "--full" ] && FULL=1

T=$(mktemp -d /tmp/featureproxy-test-demo.XXXXXX)
trap 'rm -rf "$T"' EXIT
chmod 755 "$T"

# --- the PATH without Redis ---------------------------------------------------------------------
HIDDEN=" redis-server redis-cli apt-get dnf brew sudo id cargo "
mkdir "$T/base"
declare -A seen=()
IFS=: read -r -a dirs <<<"$PATH"
for d in "${dirs[@]}"; do
  [ -d "$d" ] || continue
  links=()
  for f in "$d"/*; do
    n=${f##*/}
    [ -n "${seen[$n]:-}" ] && continue
    case "$HIDDEN" in *" $n "*) continue ;; esac
    [ -f "$f" ] && [ -x "$f" ] || continue
    seen[$n]=1
    links+=("$f")
  done
  # One ln for the whole folder: a fork per command is slow on a busy machine.
  [ ${#links[@]} -eq 0 ] || ln -s "${links[@]}" "$T/base/"
done
REAL_ID=$(command -v id)
REAL_CARGO=$(command -v cargo || true)
REAL_REDIS=$(command -v redis-server || true)

FAILS=0
CASES=0
fail() { echo "FAIL [$CASE]: $*" >&2; FAILS=$((FAILS + 1)); }

# new_case NAME: a fresh bin folder for the case's stubs, first on its PATH, before the base.
new_case() {
  CASE=$1
  CASES=$((CASES + 1))
  B="$T/$CASES"
  mkdir -p "$B/bin"
  : >"$B/calls"
  ln -s "$REAL_ID" "$B/bin/id"
  # cargo stops the demo at its build step.
  printf '#!/bin/sh\necho "cargo stub: $*"\nexit 3\n' >"$B/bin/cargo"
  chmod +x "$B/bin/cargo"
}

# stub_manager NAME: a package manager that logs its arguments (and DEBIAN_FRONTEND) and, on
# install, puts redis-server on the case's PATH.
stub_manager() {
  cat >"$B/bin/$1" <<STUB
#!/bin/sh
echo "$1 \$* [DEBIAN_FRONTEND=\${DEBIAN_FRONTEND:-}]" >>"$B/calls"
case " \$* " in
  *" install "*)
    if [ -n "$REAL_REDIS" ] && [ "$FULL" = 1 ]; then ln -sf "$REAL_REDIS" "$B/bin/redis-server"
    else printf '#!/bin/sh\\nexit 0\\n' >"$B/bin/redis-server"; chmod +x "$B/bin/redis-server"; fi ;;
esac
exit 0
STUB
  chmod +x "$B/bin/$1"
}

# stub_id UID: `id -u` answers UID.
stub_id() {
  rm -f "$B/bin/id"
  printf '#!/bin/sh\nif [ "$1" = -u ]; then echo %s; else exec %s "$@"; fi\n' "$1" "$REAL_ID" >"$B/bin/id"
  chmod +x "$B/bin/id"
}

# stub_sudo: passwordless sudo (logs, then runs the command).
stub_sudo() {
  rm -f "$B/bin/sudo"
  cat >"$B/bin/sudo" <<STUB
#!/bin/sh
echo "sudo \$*" >>"$B/calls"
[ "\$1" = -n ] && shift
exec "\$@"
STUB
  chmod +x "$B/bin/sudo"
}

# run_demo [VAR=value...]: ./demo with the case's PATH, no stdin, 30 s at most.
run_demo() {
  set +e
  env -i HOME="$T" PATH="$B/bin:$T/base" TERM=dumb "$@" timeout 30 "$ROOT/demo" </dev/null >"$B/out" 2>&1
  RC=$?
  set -e
}

expect_rc() { [ "$RC" = "$1" ] || fail "exit status $RC, expected $1; output:$(sed 's/^/  | /' "$B/out")"; }
expect_out() { grep -qxF -- "$1" "$B/out" || fail "no line '$1' in the output:$(sed 's/^/  | /' "$B/out")"; }
expect_calls() {
  local want=$1
  [ "$(cat "$B/calls")" = "$want" ] || fail "calls were:$(sed 's/^/  | /' "$B/calls"), expected:$(sed 's/^/  | /' <<<"$want")"
}
expect_no_build() { ! grep -q '==> building' "$B/out" || fail "the demo went on to build"; }
expect_build() { grep -q '^cargo stub: build --release' "$B/out" || fail "the demo did not reach its build step:$(sed 's/^/  | /' "$B/out")"; }

started=$(date +%s)

# 1. Root with apt-get, but FEATUREPROXY_NO_INSTALL=1: the command, nothing run.
new_case "no install asked, apt-get"
stub_manager apt-get
run_demo FEATUREPROXY_NO_INSTALL=1
expect_rc 1
expect_out "    apt-get update && apt-get install -y redis-server"
expect_calls ""
expect_no_build

# 2. Not root, no sudo: the sudo command, nothing run.
new_case "not root, no sudo, apt-get"
stub_manager apt-get
stub_id 1000
run_demo
expect_rc 1
expect_out "    sudo apt-get update && sudo apt-get install -y redis-server"
expect_calls ""
expect_no_build

# 3. Not root, passwordless sudo: installs through sudo -n, then goes on.
new_case "not root, passwordless sudo, apt-get"
stub_manager apt-get
stub_id 1000
stub_sudo
run_demo
expect_rc 3
expect_out "./demo: missing: redis-server; installing it: sudo apt-get update && sudo apt-get install -y redis-server"
expect_calls "sudo -n true
sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update -qq
apt-get update -qq [DEBIAN_FRONTEND=noninteractive]
sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
apt-get install -y -qq --no-install-recommends redis-server [DEBIAN_FRONTEND=noninteractive]"
expect_out "./demo: installed redis-server"
expect_build

# 4. Root with apt-get (as in CI): installs, then goes on.
new_case "root, apt-get"
stub_manager apt-get
stub_id 0
run_demo
expect_rc 3
expect_out "./demo: missing: redis-server; installing it: apt-get update && apt-get install -y redis-server"
expect_calls "apt-get update -qq [DEBIAN_FRONTEND=noninteractive]
apt-get install -y -qq --no-install-recommends redis-server [DEBIAN_FRONTEND=noninteractive]"
expect_build

# 5. A package manager that fails: exit 2 and the command to run.
new_case "root, apt-get fails"
printf '#!/bin/sh\necho "apt-get $*" >>"%s"\necho "E: Unable to locate package redis-server" >&2\nexit 100\n' "$B/calls" >"$B/bin/apt-get"
chmod +x "$B/bin/apt-get"
stub_id 0
run_demo
expect_rc 2
expect_out "./demo: run it yourself, then run ./demo again:  apt-get update && apt-get install -y redis-server"
expect_no_build

# 6. Fedora, not root, no sudo.
new_case "not root, dnf"
stub_manager dnf
stub_id 1000
run_demo
expect_rc 1
expect_out "    sudo dnf install -y redis"
expect_calls ""

# 7. macOS: brew as a normal user installs; as root it does not.
new_case "brew, normal user"
stub_manager brew
stub_id 501
run_demo
expect_rc 3
expect_calls "brew install redis [DEBIAN_FRONTEND=]"
expect_build
new_case "brew, root"
stub_manager brew
stub_id 0
run_demo
expect_rc 1
expect_out "    brew install redis"
expect_calls ""

# 8. No package manager at all.
new_case "no package manager"
stub_id 1000
run_demo
expect_rc 1
expect_out "    Debian/Ubuntu:  sudo apt-get update && sudo apt-get install -y redis-server redis-tools python3-venv"
expect_no_build

# 9. A real non-root user (when this runs as root and can switch users), no stubs for id/sudo.
as_nobody() { setpriv --reuid=nobody --regid="$(id -gn nobody)" --clear-groups "$@"; }
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1 && getent passwd nobody >/dev/null &&
  as_nobody test -x "$ROOT/demo" -a -r "$ROOT/.ci/install-deps" 2>/dev/null; then
  new_case "real user nobody, apt-get"
  stub_manager apt-get
  chmod -R a+rwX "$B"
  set +e
  as_nobody env -i HOME="$T" PATH="$B/bin:$T/base" TERM=dumb timeout 30 "$ROOT/demo" </dev/null >"$B/out" 2>&1
  RC=$?
  set -e
  expect_rc 1
  expect_out "    sudo apt-get update && sudo apt-get install -y redis-server"
  expect_calls ""
else
  echo "skipped: the case as a real non-root user (needs root, setpriv, the user nobody, and a checkout nobody can read)"
fi

# 10. --full: the whole demo after the simulated install, with the real cargo and redis-server.
if [ "$FULL" = 1 ]; then
  if [ -z "$REAL_REDIS" ] || [ -z "$REAL_CARGO" ]; then
    fail "--full needs redis-server and cargo on this PATH (they are hidden from the demo)"
  else
    new_case "root, apt-get, the whole demo"
    stub_manager apt-get
    stub_id 0
    ln -sf "$REAL_CARGO" "$B/bin/cargo"
    set +e
    env -i HOME="${HOME:-$T}" PATH="$B/bin:$T/base" TERM=dumb RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" \
      CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" DURATION=2s ENTITIES=2000 RATE=1000 \
      timeout 600 "$ROOT/demo" </dev/null >"$B/out" 2>&1
    RC=$?
    set -e
    echo "the whole demo, without redis-server on its PATH (the end of its output):"
    tail -n 22 "$B/out" | sed 's/^/  | /'
    expect_rc 0
    expect_out "./demo: installed redis-server"
    expect_out "==> stopped the proxy and redis-server"
    grep -q 'requests_total' "$B/out" || fail "no metrics in the output:$(sed 's/^/  | /' "$B/out")"
    # Every port the demo announced is closed again.
    for p in $(grep -oE '127\.0\.0\.1:[0-9]+' "$B/out" | cut -d: -f2 | sort -u); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then fail "port $p still open after the demo"; fi
    done
  fi
fi

echo "deploy/test_demo.sh: $CASES cases, $FAILS failed, $(($(date +%s) - started)) s"
[ "$FAILS" = 0 ]
