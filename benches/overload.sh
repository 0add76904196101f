#!/usr/bin/env bash
# Overload: bursts above capacity, with shedding on (the default) and off, and Redis direct,
# interleaved round by round. Reports medians over rounds of p99 and max latency (from the
# intended send time), answered and goodput (FRESH + STALE per second), OVERLOADED answers and
# the proxy's shed counter.
#
#   benches/overload.sh [ROUNDS]           (default 3; about 2 minutes per round)
#   FACTORS="2 4" benches/overload.sh [ROUNDS]
#                                          overload by measured capacity instead of bursts: each
#                                          round first measures the proxy's capacity under this
#                                          load (closed loop, 4 connections x 64 in flight, 10 s,
#                                          shedding off; FRESH+STALE answers per second), then
#                                          each factor F offers F x that capacity, steady, to the
#                                          proxy with shedding on and off; goodput is also given
#                                          as a share of the same round's capacity (the median of
#                                          the rounds' shares: capacity drifts by 10-30% between
#                                          rounds on a shared box, and a ratio to another round's
#                                          capacity carries that drift); rows are seeded again
#                                          before every round; about 4 minutes per round
#
# The load: 1 entity per GET, Zipf 0.99 over 1,000,000 seeded entities, open loop at RATE
# (default 85000 req/s, 4 connections) with 4x bursts for the last 2 s of every 10 s
# (`--burst 4x:2s/10s`, as in benches/scenarios.sh), 30 s measured after 3 s of warm-up.
# `--inflight 4096`: the client does not cap its own queue (an open-loop population of callers
# does not), so an overloaded server sees the whole queue. Needs redis-server and release builds
# of featureproxy and loadgen (cargo build --release --workspace).
#
# PIN=1: Redis and the proxy run on CPU 0 and loadgen on CPU 1 (taskset). On a small box the
# load generator's cost grows with what it offers (at 4x it makes and reads four times the
# requests), and unpinned that CPU comes out of the servers' share: goodput then falls for want
# of CPU, not because of how the proxy sheds. Pinned, capacity and every factor get one CPU for
# the servers, whatever loadgen spends. The "server cores" column shows what they got.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${1:-3}
BIN=${FEATUREPROXY_BIN:-$ROOT/target/release/featureproxy}
LOADGEN=${LOADGEN_BIN:-$ROOT/target/release/loadgen}
RATE=${RATE:-85000}
# Extra arguments: for loadgen run (e.g. "--bypass-cache", so every GET costs a Redis read) and
# for the proxy (e.g. "--shards 1"), to put capacity where the load generator can exceed it.
read -r -a LOAD_EXTRA <<<"${LOAD_EXTRA:-}"
read -r -a PROXY_EXTRA <<<"${PROXY_EXTRA:-}"
ENTITIES=${ENTITIES:-1000000}
for b in "$BIN" "$LOADGEN"; do
  [ -x "$b" ] || { echo "missing $b: cargo build --release --workspace" >&2; exit 2; }
done
SERVER_ON=(); LOAD_ON=()
if [ "${PIN:-0}" = 1 ]; then
  command -v taskset >/dev/null || { echo "PIN=1 needs taskset (apt-get install util-linux)" >&2; exit 2; }
  [ "$(nproc)" -ge 2 ] || { echo "PIN=1 needs 2 CPUs (servers on 0, loadgen on 1); this machine has $(nproc)" >&2; exit 2; }
  SERVER_ON=(taskset -c 0); LOAD_ON=(taskset -c 1)
fi
# shellcheck source=benches/proc.sh
source "$ROOT/benches/proc.sh"

# A config per variant: the example views, shedding at its default or off.
cp "$ROOT/examples/features.toml" "$WORK/shed.toml"
{ printf '[server]\nshed_queue_delay = "0s"\n\n'; cat "$ROOT/examples/features.toml"; } >"$WORK/noshed.toml"

start_proxy() {
  PORT=$(free_port); STATS=$(free_port)
  ${SERVER_ON[@]+"${SERVER_ON[@]}"} "$BIN" serve --config "$1" --listen "127.0.0.1:$PORT" --stats-listen "127.0.0.1:$STATS" \
    --redis "redis://127.0.0.1:$REDIS_PORT" ${PROXY_EXTRA[@]+"${PROXY_EXTRA[@]}"} 2>"$WORK/proxy.log" &
  PROXY_PID=$!
  wait_port "$PORT"
}
stop_proxy() { kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=""; }

# Seeded before the rounds, and again before each round of FACTORS, so that rows stay FRESH
# (user_features turns STALE after 2 min and EXPIRED after 10).
seed() {
  echo "seeding $ENTITIES entities" >&2
  start_proxy "$WORK/shed.toml"
  ${LOAD_ON[@]+"${LOAD_ON[@]}"} "$LOADGEN" seed --target "127.0.0.1:$PORT" --view user_features --entities "$ENTITIES" >/dev/null 2>&1
  stop_proxy
}
seed

LOAD=(--entities "$ENTITIES" --rate "$RATE" --burst 4x:2s/10s --duration 30s --warmup 3s
      --connections 4 --inflight 4096 --no-timeline ${LOAD_EXTRA[@]+"${LOAD_EXTRA[@]}"})
RESULTS="$WORK/results.tsv"
run() {
  local name=$1 target=$2 shed="" pids=(--server-pid "$REDIS_PID")
  [ -n "$PROXY_PID" ] && pids+=(--server-pid "$PROXY_PID")
  ${LOAD_ON[@]+"${LOAD_ON[@]}"} "$LOADGEN" run --target "$target" "${LOAD[@]}" "${pids[@]}" \
    --json "$WORK/run.json" >/dev/null 2>&1 || true
  if [ -n "$PROXY_PID" ]; then
    shed=$(curl -s "127.0.0.1:$STATS/metrics" | awk '/^featureproxy_requests_shed_total/ {print $2}')
  fi
  python3 - "$WORK/run.json" "$name" "${shed:--}" "${CAP_GOOD:-}" >>"$RESULTS" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
lat, st = j["latency_us"], j["statuses"]
good = (st["fresh"] + st["stale"]) / j["duration_s"]
# Goodput counts entities; offered is in requests: scale it to entities for the share.
batch = float(j["batch"]) if str(j["batch"]).isdigit() else 1.0  # "N", or "A..B" (then 1)
over = sum(v for k, v in j["errors"].items() if "OVERLOADED" in k)
# CPU the servers (Redis, and the proxy if any) used over the window, in cores.
# Redis's first, then the proxy's (the order of --server-pid).
each = [c["cpu_s"] / c["window_s"] if c["cpu_s"] is not None else 0.0 for c in j["server_cpu"]] + [0.0]
# This run's goodput as a share of its round's capacity (FACTORS only).
share = good / float(sys.argv[4]) if sys.argv[4] else 0.0
print(f"{sys.argv[2]}\t{j['offered_rps']:.0f}\t{j['achieved_rps']:.0f}\t{good:.0f}\t{lat['p99']/1000:.2f}\t{lat['max']/1000:.2f}\t{over}\t{sys.argv[3]}\t{j['errors_total'] - over}\t{j['offered_rps'] * batch:.0f}\t{100 * j['late_share']:.1f}\t{sum(each):.3f}\t{each[0]:.3f}\t{each[1]:.3f}\t{share:.4f}")
EOF
}

FACTORS=${FACTORS:-}
CAP_GOOD=""
CAPS="$WORK/capacity.tsv"
: >"$CAPS"
if [ -n "$FACTORS" ]; then
  for r in $(seq 1 "$ROUNDS"); do
    [ "$r" -gt 1 ] && seed
    echo "round $r: capacity (closed loop, shedding off)" >&2
    start_proxy "$WORK/noshed.toml"
    ${LOAD_ON[@]+"${LOAD_ON[@]}"} "$LOADGEN" run --target "127.0.0.1:$PORT" --entities "$ENTITIES" --closed --connections 4 \
      --inflight 64 --duration 10s --warmup 3s --no-timeline ${LOAD_EXTRA[@]+"${LOAD_EXTRA[@]}"} \
      --server-pid "$REDIS_PID" --server-pid "$PROXY_PID" --json "$WORK/capacity.json" >/dev/null 2>&1
    stop_proxy
    read -r CAP CAP_GOOD CAP_CORES CAP_REDIS CAP_PROXY < <(python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))
good = (j["statuses"]["fresh"] + j["statuses"]["stale"]) / j["duration_s"]
batch = float(j["batch"]) if str(j["batch"]).isdigit() else 1.0  # "N", or "A..B" (then 1)
each = [c["cpu_s"] / c["window_s"] for c in j["server_cpu"]]
print(round(good / batch), round(good), f"{sum(each):.3f}", f"{each[0]:.3f}", f"{each[1]:.3f}")' "$WORK/capacity.json")
    printf '%s\t%s\t%s\t%s\t%s\n' "$CAP" "$CAP_GOOD" "$CAP_CORES" "$CAP_REDIS" "$CAP_PROXY" >>"$CAPS"
    echo "capacity: $CAP req/s, goodput $CAP_GOOD FRESH+STALE/s, server cores $CAP_CORES (Redis $CAP_REDIS, proxy $CAP_PROXY)" >&2
    for f in $FACTORS; do
      LOAD=(--entities "$ENTITIES" --rate $((f * CAP)) --duration 30s --warmup 3s
            --connections 4 --inflight 4096 --no-timeline ${LOAD_EXTRA[@]+"${LOAD_EXTRA[@]}"})
      order="shed noshed"; [ $((r % 2)) = 0 ] && order="noshed shed"
      for v in $order; do
        echo "round $r: ${f}x capacity, $v" >&2
        case $v in
          shed) start_proxy "$WORK/shed.toml"; run "proxy, shedding (default), ${f}x capacity" "127.0.0.1:$PORT"; stop_proxy ;;
          noshed) start_proxy "$WORK/noshed.toml"; run "proxy, shed_queue_delay=0s, ${f}x capacity" "127.0.0.1:$PORT"; stop_proxy ;;
        esac
      done
    done
  done
else
  # Bursts: 4x the rate for the last 2 s of every 10 s; Redis direct for reference.
  for r in $(seq 1 "$ROUNDS"); do
    case $((r % 3)) in
      1) order="shed noshed direct" ;; 2) order="noshed direct shed" ;; *) order="direct shed noshed" ;;
    esac
    for v in $order; do
      echo "round $r: $v" >&2
      case $v in
        shed) start_proxy "$WORK/shed.toml"; run "proxy, shedding (default)" "127.0.0.1:$PORT"; stop_proxy ;;
        noshed) start_proxy "$WORK/noshed.toml"; run "proxy, shed_queue_delay=0s" "127.0.0.1:$PORT"; stop_proxy ;;
        direct) run "Redis direct" "resp://127.0.0.1:$REDIS_PORT" ;;
      esac
    done
  done
fi

PLACED="every process on any CPU"
[ "${PIN:-0}" = 1 ] && PLACED="Redis and the proxy pinned to CPU 0, loadgen to CPU 1 (PIN=1)"
python3 - "$RESULTS" "$ROUNDS" "${LOAD[*]}" "${PROXY_EXTRA[*]+${PROXY_EXTRA[*]}}" "$CAPS" "$PLACED" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
caps = [l.rstrip("\n").split("\t") for l in open(sys.argv[5]) if l.strip()]
print(f"Medians of {sys.argv[2]} interleaved rounds; loadgen run {sys.argv[3]}; proxy extra arguments: {sys.argv[4] or 'none'}; {sys.argv[6]}")
if caps:
    med = lambda i: statistics.median(float(c[i]) for c in caps)
    each = ", ".join(c[0] for c in caps)
    print(f"Capacity, measured at the start of every round (closed loop, 4 connections x 64 in flight, shedding off): {med(0):.0f} requests/s answered FRESH or STALE (rounds: {each}), {med(1):.0f} entities/s, the servers using {med(2):.2f} cores (Redis {med(3):.2f}, the proxy {med(4):.2f}). The command above is the last run's; each row names its factor. Goodput / capacity's is the median of the rounds' own shares (each in brackets).")
print()
print("| target | offered req/s | answered req/s | goodput (FRESH+STALE entities/s, share of offered) | p99 | max | OVERLOADED answers | shed counter | other errors | loadgen sends > 1 ms late | server cores (Redis, proxy) |" + (" goodput / capacity's |" if caps else ""))
print("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if caps else ""))
for name in dict.fromkeys(r[0] for r in rows):
    rs = [r for r in rows if r[0] == name]
    med = lambda i: statistics.median(float(r[i]) for r in rs)
    shed = "-" if rs[0][7] == "-" else f"{med(7):.0f}"
    cores = f"{med(11):.2f} ({med(12):.2f}, {med(13):.2f})" if med(13) > 0 else f"{med(11):.2f}"
    share = f" {med(14):.1%} ({', '.join(f'{float(r[14]):.1%}' for r in rs)}) |" if caps else ""
    print(f"| {name} | {med(1):.0f} | {med(2):.0f} | {med(3):.0f} ({med(3)/med(9):.1%}) | {med(4):.2f} ms | {med(5):.2f} ms | {med(6):.0f} | {shed} | {med(8):.0f} | {med(10):.1f}% | {cores} |{share}")
EOF
