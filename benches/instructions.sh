#!/usr/bin/env bash
# Instructions the proxy executes per request under a load, counted by valgrind's callgrind:
# user-space only (no kernel time), but the same from run to run where CPU time on this shared
# 2-core box swings by +-20% per round, so two builds can be told apart by a few percent.
#
#   benches/instructions.sh BINARY LABEL [LOADGEN RUN ARGS...]
#   e.g. benches/instructions.sh target/release/featureproxy after --rate 50 --connections 4 --batch 100
#
# Starts a private redis-server, seeds 20,000 entities of user_features through the proxy, starts
# the proxy again (one shard) under callgrind, runs the load once to warm up, zeroes the counters, runs it again for 10 s
# and dumps them. Prints the requests answered, the total instructions of that run and per
# request, and `callgrind_annotate --inclusive=yes` of the dump is in $OUT/LABEL/ for a look per
# function (e.g. `serving::get::...::finish_get`, the whole answer path of a GET). Keep the rate
# low (callgrind runs the proxy ~50x slower): 50 GET/s of 100 entities, 500 of 1.
# Needs valgrind, redis-server and a release loadgen.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:?usage: instructions.sh BINARY LABEL [LOADGEN RUN ARGS...]}
LABEL=${2:?usage: instructions.sh BINARY LABEL [LOADGEN RUN ARGS...]}
shift 2
LOADGEN=${LOADGEN:-$ROOT/target/release/loadgen}
OUT=${OUT:-/tmp/featureproxy-instructions}
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
[ -x "$LOADGEN" ] || { echo "no loadgen at $LOADGEN: cargo build --release -p loadgen" >&2; exit 2; }
# shellcheck source=benches/proc.sh
source "$ROOT/benches/proc.sh"
D=$OUT/$LABEL
rm -rf "$D"; mkdir -p "$D"
RP=$(free_port)
redis-server --port "$RP" --save "" --appendonly no >/dev/null &
RPID=$!
wait_port "$RP"
# Seeded through a proxy running at full speed: under callgrind, PUTs of 1,000 rows outlast
# the write timeout and open the breaker.
P=$(free_port); S=$(free_port)
"$BIN" serve --config "$ROOT/examples/features.toml" --listen "127.0.0.1:$P" --stats-listen "127.0.0.1:$S" \
  --redis "redis://127.0.0.1:$RP" --shards 1 2>"$D/seed-proxy.log" &
PP=$!
trap 'kill $PP $RPID 2>/dev/null || true' EXIT INT TERM
wait_port "$P"
# loadgen's output goes to $D/loadgen.log: it says why, if a step fails.
"$LOADGEN" seed --target "127.0.0.1:$P" --entities 20000 >>"$D/loadgen.log" 2>&1
kill "$PP"; wait "$PP" 2>/dev/null || true
P=$(free_port); S=$(free_port)
valgrind --tool=callgrind --callgrind-out-file="$D/callgrind.%p" \
  "$BIN" serve --config "$ROOT/examples/features.toml" --listen "127.0.0.1:$P" \
  --stats-listen "127.0.0.1:$S" --redis "redis://127.0.0.1:$RP" --shards 1 2>"$D/proxy.log" &
PP=$!
# Under callgrind the proxy takes seconds to start.
for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$P") 2>/dev/null && break; sleep 0.1; done
"$LOADGEN" run --target "127.0.0.1:$P" --entities 20000 --duration 3s --warmup 0s --no-timeline "$@" >>"$D/loadgen.log" 2>&1
callgrind_control -z "$PP" >/dev/null
"$LOADGEN" run --target "127.0.0.1:$P" --entities 20000 --duration 10s --warmup 0s --no-timeline \
  --json "$D/run.json" "$@" >>"$D/loadgen.log" 2>&1
callgrind_control -d "$PP" >/dev/null
DUMP=$(ls "$D"/callgrind.*.1)
python3 - "$D/run.json" "$DUMP" "$LABEL" <<'PY'
import json, sys
run, dump, label = sys.argv[1:4]
n = round(json.load(open(run))["achieved_rps"] * 10)
ir = next(int(l.split()[1]) for l in open(dump) if l.startswith(("summary:", "totals:")))
print(f"{label}\trequests {n}\tinstructions {ir}\tper request {ir / n:.0f}")
PY
