#!/usr/bin/env bash
# The native core before and after a change, alone, in alternating processes: each round runs
# drive_native.py once per build, the order flipped every other round (interleaved rounds).
#   BEFORE=venv-a AFTER=venv-b PROXY_BIN=path/to/featureproxy ab.sh ROUNDS SECONDS MODE...
# MODE: get1 | get100 | threads16. Each venv holds featureproxy and featureproxy_native of one
# build (pip install ./python ./python/native). One line per run:
#   MODE before|after MODE: N calls, X us CPU/call, R/s
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rounds=$1; secs=$2; shift 2
for m in "$@"; do
  for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then order="before after"; else order="after before"; fi
    for v in $order; do
      if [ "$v" = before ]; then py="$BEFORE/bin/python"; else py="$AFTER/bin/python"; fi
      echo "$m $v $(cd /tmp && "$py" "$here/drive_native.py" "$m" "$secs" 2>&1 | grep 'us CPU')"
    done
  done
done
