#!/usr/bin/env bash
# The checks of what deploy/ and the operators' docs ship, run by the README's test command:
#
#   1. deploy/check_metrics.py   every metric named in deploy/ and docs/ is served
#   2. deploy/check_runbooks.py  every alert links to its own section of docs/runbooks.md
#   3. promtool                  the rule files load, and alerts_test.yml's unit tests pass
#   4. deploy/test_demo.sh       ./demo without redis-server installs it or says what to run
#
# About 5 s. promtool comes from PATH, else from Debian's prometheus package, downloaded (not
# installed: no service starts) and unpacked under target/promtool once; where neither works the
# promtool step is skipped with a message (FEATUREPROXY_REQUIRE_PROMTOOL=1 makes that a failure).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 deploy/check_metrics.py
python3 deploy/check_runbooks.py

promtool=$(command -v promtool || true)
cached=target/promtool/usr/bin/promtool
if [ -z "$promtool" ] && [ -x "$cached" ]; then
  promtool=$cached
fi
if [ -z "$promtool" ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
  echo "deploy/check.sh: promtool not on PATH: unpacking it from Debian's prometheus package into target/promtool"
  tmp=$(mktemp -d)
  fetch() { (cd "$tmp" && apt-get download -qq prometheus </dev/null >/dev/null 2>&1); }
  if ! fetch && [ "$(id -u)" = 0 ]; then
    apt-get update -qq </dev/null >/dev/null 2>&1 || true
    fetch || true
  fi
  if ls "$tmp"/prometheus_*.deb >/dev/null 2>&1; then
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
    mkdir -p "$(dirname "$cached")"
    cp "$tmp/x/usr/bin/promtool" "$cached.tmp"
    mv "$cached.tmp" "$cached"
    promtool=$cached
  fi
  rm -rf "$tmp"
fi
if [ -n "$promtool" ]; then
  "$promtool" check rules deploy/prometheus/recording.yml deploy/prometheus/alerts.yml
  "$promtool" check config deploy/prometheus/prometheus.yml
  "$promtool" test rules deploy/prometheus/alerts_test.yml
else
  msg="promtool not found, so the rules' unit tests did not run (Debian: apt-get install prometheus, or put promtool on PATH)"
  if [ "${FEATUREPROXY_REQUIRE_PROMTOOL:-}" = 1 ]; then
    echo "deploy/check.sh: $msg" >&2
    exit 1
  fi
  echo "deploy/check.sh: SKIPPED: $msg"
fi

deploy/test_demo.sh
