#!/usr/bin/env bash
# Profiles featureproxy on a local 3-master Redis Cluster (no replicas) under batch 100, cache
# bypassed, closed loop 16 x 1, and reports each build's requests and CPU (proxy, all masters).
#
#   benches/cluster_profile.sh NAME=BINARY [NAME=BINARY ...]
#
# Per build: 10 s of `loadgen run --closed --connections 16 --inflight 1 --batch 100
# --bypass-cache` against one proxy (`--shards 1`), with `perf record -F 1999 -g` on the proxy
# for 6 s of it into $OUT/c-NAME.data (read it with `perf report -i ... --no-children --sort
# symbol`). Builds run in the order given: repeat them (a=... b=... a2=... b2=...) to interleave.
# Needs redis-server, redis-cli, perf and a release loadgen (cargo build --release -p loadgen).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LG=${LOADGEN:-$ROOT/target/release/loadgen}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
fp() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# A free port whose cluster bus port (port + 10000) is free and valid too.
fp_bus() {
  python3 -c '
import random, socket
while True:
    p = random.randint(20000, 45000)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError:
        pass'
}
D=$(mktemp -d); PIDS=(); PORTS=()
for _ in 1 2 3; do
  p=$(fp_bus); PORTS+=("$p"); mkdir -p "$D/$p"
  redis-server --port "$p" --bind 127.0.0.1 --dir "$D/$p" --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
    --cluster-require-full-coverage no --save '' --appendonly no --daemonize no >/dev/null 2>&1 &
  PIDS+=($!)
done
for p in "${PORTS[@]}"; do until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.1; done; done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${PORTS[@]}") --cluster-yes >/dev/null 2>&1
for p in "${PORTS[@]}"; do
  until redis-cli -p "$p" cluster info | grep -q cluster_state:ok; do sleep 0.2; done
done
URL="redis-cluster://127.0.0.1:${PORTS[0]}?node=127.0.0.1:${PORTS[1]}&node=127.0.0.1:${PORTS[2]}"
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
redis_ticks() { local t=0 pid; for pid in "${PIDS[@]}"; do t=$((t + $(ticks "$pid"))); done; echo $t; }
seeded=0
for spec in "$@"; do
  name=${spec%%=*}; bin=${spec#*=}
  P=$(fp); S=$(fp)
  "$bin" serve --config "$ROOT/examples/features.toml" --listen "127.0.0.1:$P" \
    --stats-listen "127.0.0.1:$S" --redis "$URL" --shards 1 2>"$OUT/$name.log" &
  PP=$!
  until (echo >"/dev/tcp/127.0.0.1/$P") 2>/dev/null; do sleep 0.1; done
  curl -sf "http://127.0.0.1:$S/ready" >/dev/null || sleep 1
  if [ $seeded = 0 ]; then
    "$LG" seed --target "127.0.0.1:$P" --view user_features --entities 100000 >/dev/null 2>&1
    seeded=1
  fi
  c0=$(ticks $PP); r0=$(redis_ticks)
  "$LG" run --target "127.0.0.1:$P" --entities 100000 --closed --connections 16 --inflight 1 \
    --batch 100 --duration 10s --warmup 1s --no-timeline --bypass-cache >"$OUT/c-$name.txt" 2>&1 &
  LGP=$!
  sleep 2
  perf record -F 1999 -g -p $PP -o "$OUT/c-$name.data" -- sleep 6 >/dev/null 2>&1
  wait $LGP
  c1=$(ticks $PP); r1=$(redis_ticks)
  echo "$name: $(grep answered "$OUT/c-$name.txt" | cut -c1-80) proxy_ticks=$((c1 - c0)) redis_ticks=$((r1 - r0))"
  kill $PP; wait $PP 2>/dev/null
done
kill "${PIDS[@]}"; wait 2>/dev/null; rm -rf "$D"
echo "profiles and loadgen reports in $OUT"
