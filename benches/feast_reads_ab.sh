#!/usr/bin/env bash
# Proxy and Redis CPU per entity on a Feast view, two featureproxy builds side by side:
#
#   benches/feast_reads_ab.sh OLD_BIN NEW_BIN [ROUNDS]
#
# One private redis-server; 100,000 rows of benches/results/feast/featureproxy.toml's
# driver_hourly_stats (16 x f32, Feast's layout) written through the first proxy with
# `loadgen seed`; then, round by round and interleaved, each build alone (`--shards 1`) under
# `loadgen run --closed --connections 16 --inflight 1 --batch 100 --bypass-cache` for 10 s, with
# `--server-pid` on the proxy and Redis. Prints each run's throughput and CPU per entity.
# LOADGEN_BIN: else target/release/loadgen.
set -u
OLD=$1 NEW=$2 ROUNDS=${3:-2}
LG=${LOADGEN_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/loadgen}
CFG=$(cd "$(dirname "$0")" && pwd)/results/feast/featureproxy.toml
d=$(mktemp -d)
rp=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
redis-server --port $rp --bind 127.0.0.1 --save '' --appendonly no --dir $d > $d/redis.log 2>&1 &
RPID=$!
for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$rp) 2>/dev/null && break; sleep 0.05; done
trap 'kill $RPID 2>/dev/null; [ -n "${PPID2:-}" ] && kill $PPID2 2>/dev/null' EXIT
seeded=0
for r in $(seq 1 $ROUNDS); do
  for name in OLD NEW; do
    bin=${!name}
    pp=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
    sp=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
    $bin serve --config $CFG --listen 127.0.0.1:$pp --stats-listen 127.0.0.1:$sp --redis redis://127.0.0.1:$rp --shards 1 > $d/proxy.log 2>&1 &
    PPID2=$!
    for i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$pp) 2>/dev/null && break; sleep 0.1; done
    if [ $seeded = 0 ]; then $LG seed --target 127.0.0.1:$pp --view driver_hourly_stats --entities 100000 --key-prefix "" > $d/seed.log 2>&1; seeded=1; fi
    out=$($LG run --target 127.0.0.1:$pp --view driver_hourly_stats --entities 100000 --key-prefix "" --verify-every 0 --closed --connections 16 --inflight 1 --batch 100 --bypass-cache --duration 10s --warmup 2s --server-pid $PPID2 --server-pid $RPID 2>&1)
    echo "round $r $name: $(echo "$out" | grep -E '^requests' | head -1)"
    echo "$out" | grep -E "server cpu|not fresh|DEGRADED|status" | head -4 | sed "s/^/   /"
    kill $PPID2; wait $PPID2 2>/dev/null; PPID2=
  done
done
