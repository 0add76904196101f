#!/usr/bin/env bash
# Compares two featureproxy builds side by side: the same Redis, the same seeded rows, the same
# closed-loop loads, interleaved round by round (the order flips every round) so that drift on a
# shared box hits both builds alike. For each build and load it reports the median over rounds
# of throughput and of the proxy's CPU per request (utime+stime from /proc/PID/stat over the
# measured window, divided by the requests answered in it), and the median of the new/old ratios
# taken within each round (the steadier figure where the box drifts between rounds).
#
#   benches/compare_builds.sh OLD_BINARY NEW_BINARY [ROUNDS]     (default 3 rounds)
#
# Loads (the ones the architecture and cost issues quote):
#   one:   1 entity per GET, 50 connections x 1 in flight (50 inference threads calling in turn)
#   batch: 100 entities per GET, 16 connections x 1 in flight
# over 1,000,000 seeded entities of user_features, Zipf 0.99, the hot cache on, default shards.
# PROXY_EXTRA adds arguments to both proxies (e.g. PROXY_EXTRA="--shards 1"); LOAD_EXTRA to every
# loadgen run (e.g. LOAD_EXTRA="--bypass-cache").
# OPEN=1 runs both loads open loop at a fixed rate instead (RATE_ONE, default 20000 req/s;
# RATE_BATCH, default 2000 req/s), below what either build sustains: the proxy then does the same
# work per second in both arms, and its CPU per request does not swing with how the closed loop's
# scheduling happens to batch requests into reads (+-15% between rounds on this box). The figure
# for changes of a few percent.
# Needs redis-server on PATH and a release loadgen (cargo build --release -p loadgen).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=${1:?usage: compare_builds.sh OLD_BINARY NEW_BINARY [ROUNDS]}
NEW=${2:?usage: compare_builds.sh OLD_BINARY NEW_BINARY [ROUNDS]}
ROUNDS=${3:-3}
LOADGEN=${LOADGEN:-$ROOT/target/release/loadgen}
ENTITIES=${ENTITIES:-1000000}
DUR=${DUR:-8}
WARM=${WARM:-2}
[ -x "$LOADGEN" ] || { echo "no loadgen at $LOADGEN: cargo build --release -p loadgen" >&2; exit 2; }
# shellcheck source=benches/proc.sh
source "$ROOT/benches/proc.sh"
read -r -a PROXY_EXTRA <<<"${PROXY_EXTRA:-}"
read -r -a LOAD_EXTRA <<<"${LOAD_EXTRA:-}"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start_proxy() {
  PORT=$(free_port); STATS=$(free_port)
  "$1" serve --config "$ROOT/examples/features.toml" --listen "127.0.0.1:$PORT" \
    --stats-listen "127.0.0.1:$STATS" --redis "redis://127.0.0.1:$REDIS_PORT" \
    ${PROXY_EXTRA[@]+"${PROXY_EXTRA[@]}"} 2>"$WORK/proxy.log" &
  PROXY_PID=$!
  wait_port "$PORT"
}
stop_proxy() { kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=""; }

echo "seeding $ENTITIES entities through the new build" >&2
start_proxy "$NEW"
"$LOADGEN" seed --target "127.0.0.1:$PORT" --view user_features --entities "$ENTITIES" >/dev/null
stop_proxy

TICK=$(getconf CLK_TCK)
RESULTS="$WORK/results.tsv"
# One measured run: prints build, load, requests/s, entities/s, proxy CPU us per request.
measure() {
  local build=$1 bin=$2 load=$3; shift 3
  start_proxy "$bin"
  "$LOADGEN" run --target "127.0.0.1:$PORT" --entities "$ENTITIES" \
    --duration "${DUR}s" --warmup "${WARM}s" --no-timeline --json "$WORK/run.json" "$@" \
    ${LOAD_EXTRA[@]+"${LOAD_EXTRA[@]}"} >/dev/null &
  local lg=$!
  sleep "$WARM"
  local t0 c0 t1 c1
  t0=$(date +%s.%N); c0=$(cpu_ticks "$PROXY_PID")
  wait "$lg"
  t1=$(date +%s.%N); c1=$(cpu_ticks "$PROXY_PID")
  stop_proxy
  python3 - "$WORK/run.json" "$build" "$load" "$t0" "$t1" "$c0" "$c1" "$TICK" >>"$RESULTS" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
build, load = sys.argv[2], sys.argv[3]
t0, t1, c0, c1, tick = map(float, sys.argv[4:9])
rps = j["achieved_rps"]
cpu_us = (c1 - c0) / tick * 1e6
print(f"{build}\t{load}\t{rps:.0f}\t{j['entities_per_s']:.0f}\t{cpu_us / (rps * (t1 - t0)):.2f}\t{j['errors_total']}")
EOF
}

for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="old new"; else order="new old"; fi
  for b in $order; do
    bin=$OLD; [ "$b" = new ] && bin=$NEW
    echo "round $r: $b" >&2
    if [ "${OPEN:-0}" = 1 ]; then
      measure "$b" "$bin" one --rate "${RATE_ONE:-20000}" --connections 50 --batch 1
      measure "$b" "$bin" batch --rate "${RATE_BATCH:-2000}" --connections 16 --batch 100
    else
      measure "$b" "$bin" one --closed --connections 50 --inflight 1 --batch 1
      measure "$b" "$bin" batch --closed --connections 16 --inflight 1 --batch 100
    fi
  done
done

python3 - "$RESULTS" "$ROUNDS" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
print(f"medians of {sys.argv[2]} interleaved rounds (per-round values in brackets)")
print("load   build  req/s     entities/s   proxy CPU us/req   errors")
for load in ("one", "batch"):
    med = {}
    for build in ("old", "new"):
        rs = [r for r in rows if r[0] == build and r[1] == load]
        rps = statistics.median(float(r[2]) for r in rs)
        eps = statistics.median(float(r[3]) for r in rs)
        cpu = statistics.median(float(r[4]) for r in rs)
        med[build] = (rps, cpu)
        print(f"{load:6} {build:6} {rps:9.0f} {eps:12.0f} {cpu:12.2f}   {sum(int(r[5]) for r in rs):6}"
              f"   [{', '.join(r[2] for r in rs)} req/s; {', '.join(r[4] for r in rs)} us]")
    print(f"{load:6} new/old throughput {med['new'][0] / med['old'][0]:.3f}, CPU per request {med['new'][1] / med['old'][1]:.3f}")
    # The same ratios taken round by round (the two runs of a round are the closest in time, so
    # drift between rounds cancels), and their median: the steadier figure on a noisy box.
    old = [r for r in rows if r[0] == "old" and r[1] == load]
    new = [r for r in rows if r[0] == "new" and r[1] == load]
    tput = [float(n[2]) / float(o[2]) for o, n in zip(old, new)]
    cpu = [float(n[4]) / float(o[4]) for o, n in zip(old, new)]
    print(f"{load:6} paired, per round: throughput {statistics.median(tput):.3f} [{', '.join(f'{x:.2f}' for x in tput)}],"
          f" CPU per request {statistics.median(cpu):.3f} [{', '.join(f'{x:.2f}' for x in cpu)}]")
EOF
