#!/usr/bin/env bash
# What one standalone redis-server spends per key: one MGET of 100 keys against 100 one-key MGETs
# arriving in one write (redis-benchmark -P 100), the cost a Redis Cluster imposes since it
# refuses an MGET across slots. Redis CPU from /proc/PID/stat around each run; 2 rounds.
#
#   benches/redis_command_cost.sh
set -u
D=$(mktemp -d)
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
redis-server --port "$PORT" --save '' --appendonly no --dir "$D" >/dev/null 2>&1 &
S=$!
until redis-cli -p "$PORT" ping >/dev/null 2>&1; do sleep 0.1; done
redis-benchmark -p "$PORT" -t set -n 200000 -r 200000 -d 73 -q >/dev/null 2>&1
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
keys100=$(for _ in $(seq 100); do printf 'key:__rand_int__ '; done)
run() { # name, then redis-benchmark arguments
  local name=$1; shift
  local t0; t0=$(ticks $S)
  redis-benchmark -p "$PORT" -c 16 -r 200000 "$@" -q >/dev/null 2>&1
  echo "$name: $(( ($(ticks $S) - t0) * 10 )) ms of redis CPU for 2,000,000 keys"
}
for _ in 1 2; do
  # shellcheck disable=SC2086
  run "1 MGET of 100 keys x 20000" -n 20000 -P 1 MGET $keys100
  run "one-key MGETs, 100 per write, x 2000000" -n 2000000 -P 100 MGET key:__rand_int__
done
kill $S; wait 2>/dev/null; rm -rf "$D"
