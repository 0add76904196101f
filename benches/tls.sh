#!/usr/bin/env bash
# What TLS costs the servers, side by side in one run, interleaved round by round:
#  - client side: one proxy process (1 shard, hot cache on, plaintext to Redis) serving the same
#    loads on its plaintext port and on its TLS port: its CPU per request with and without TLS;
#  - Redis side: that proxy and a second one (1 shard) whose Redis connections are TLS
#    (rediss:// to the same redis-server's TLS port), both with --bypass-cache so every entity is
#    read from Redis: Redis's CPU per request with the proxy's connections in plaintext and in TLS.
# Loads (as benches/cost.sh): 1 entity per GET, open loop at 20,000 req/s over 4 connections, and
# 100 entities per GET, closed loop, 16 connections x 1 in flight; user_features, Zipf 0.99 over
# ENTITIES seeded once. CPU is each process's utime+stime over the measured window
# (`loadgen run --server-pid`). Medians over the rounds.
#
#   benches/tls.sh [--rounds N] [--duration 10s] [--entities N] [--out DIR]
#
# Binaries: target/release/{featureproxy,loadgen} (built when missing). Certificates: the test
# fixtures (tests/fixtures/tls). Needs redis-server built with TLS (Debian's is).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=3; DUR=10s; WARM=2s; ENTITIES=1000000; OUT="$ROOT/benches/results/tls"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --duration) DUR=$2; shift ;;
    --entities) ENTITIES=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "tls.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
log() { printf '[tls %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

FX="$ROOT/tests/fixtures/tls"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
FP="$BIN/featureproxy"; LG="$BIN/loadgen"
if [ ! -x "$FP" ] || [ ! -x "$LG" ]; then
  (cd "$ROOT" && cargo build --release --bin featureproxy --bin loadgen) || die "build"
fi
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/*.txt "$OUT"/runs.tsv "$OUT"/commands.tsv
RUN=$(mktemp -d /tmp/fp-tls.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$RUN"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 500); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.02; done; die "nothing on port $1"; }

RP=$(port); RT=$(port)
redis-server --port "$RP" --tls-port "$RT" --bind 127.0.0.1 --save "" --appendonly no \
  --tls-cert-file "$FX/server.crt" --tls-key-file "$FX/server.key" --tls-ca-cert-file "$FX/ca.crt" \
  --tls-auth-clients no --dir "$RUN" >"$RUN/redis.log" 2>&1 &
REDIS_PID=$!; PIDS+=("$REDIS_PID"); wait_port "$RP"; wait_port "$RT"

# Proxy A: plaintext and TLS ports, plaintext to Redis. Proxy B: TLS to Redis.
PA=$(port); PAT=$(port); SA=$(port); PB=$(port); SB=$(port)
sed -n '/^\[\[view\]\]/,$p' "$ROOT/examples/features.toml" >"$RUN/views.toml"
cat >"$RUN/a.toml" <<EOF
[server.tls]
listen = "127.0.0.1:$PAT"
cert_file = "$FX/server.crt"
key_file = "$FX/server.key"

EOF
cat "$RUN/views.toml" >>"$RUN/a.toml"
cat >"$RUN/b.toml" <<EOF
[server.redis_tls]
ca_file = "$FX/ca.crt"

EOF
cat "$RUN/views.toml" >>"$RUN/b.toml"
"$FP" serve --config "$RUN/a.toml" --listen "127.0.0.1:$PA" --stats-listen "127.0.0.1:$SA" \
  --redis "redis://127.0.0.1:$RP" --shards 1 2>"$RUN/a.log" &
A_PID=$!; PIDS+=("$A_PID")
"$FP" serve --config "$RUN/b.toml" --listen "127.0.0.1:$PB" --stats-listen "127.0.0.1:$SB" \
  --redis "rediss://127.0.0.1:$RT" --shards 1 2>"$RUN/b.log" &
B_PID=$!; PIDS+=("$B_PID")
wait_port "$PA"; wait_port "$PAT"; wait_port "$PB"
{
  echo "servers:"
  echo "  redis-server --port $RP --tls-port $RT (tests/fixtures/tls certificates, tls-auth-clients no)   # pid $REDIS_PID"
  echo "  featureproxy serve (plaintext :$PA, [server.tls] :$PAT, redis://:$RP, --shards 1)   # pid $A_PID"
  echo "  featureproxy serve (:$PB, rediss://:$RT with [server.redis_tls] ca_file, --shards 1)   # pid $B_PID"
} >"$OUT/servers.txt"

log "seeding $ENTITIES entities"
"$LG" seed --target "127.0.0.1:$PA" --view user_features --entities "$ENTITIES" >"$OUT/seed.txt" 2>&1 || die "seed"

TLS_FLAGS=(--tls-ca "$FX/ca.crt")
run_one() { # load target round
  local load=$1 tgt=$2 r=$3 args=() pids=() target
  case $load in
    1e) args=(--rate 20000 --connections 4) ;;
    b100) args=(--closed --batch 100 --connections 16 --inflight 1) ;;
  esac
  case $tgt in
    plain) target="127.0.0.1:$PA"; pids=("$A_PID") ;;
    tls) target="127.0.0.1:$PAT"; pids=("$A_PID"); args+=("${TLS_FLAGS[@]}") ;;
    redis-plain) target="127.0.0.1:$PA"; pids=("$REDIS_PID"); args+=(--bypass-cache) ;;
    redis-tls) target="127.0.0.1:$PB"; pids=("$REDIS_PID"); args+=(--bypass-cache) ;;
  esac
  local cmd=("$LG" run --target "$target" --view user_features --entities "$ENTITIES" "${args[@]}"
    --duration "$DUR" --warmup "$WARM" --verify-every 0)
  local p; for p in "${pids[@]}"; do cmd+=(--server-pid "$p"); done
  printf '%s/%s/r%s\t%s\n' "$load" "$tgt" "$r" "${cmd[*]}" >>"$OUT/commands.tsv"
  "${cmd[@]}" --no-timeline >"$OUT/${load}_${tgt}_r$r.txt" 2>&1 || log "run $load/$tgt/r$r failed"
  local cpu errs
  cpu=$(awk '/^server cpu/ && !/total/ { for (i = 1; i <= NF; i++) if ($(i+1) == "us/request,") print $i }' \
    "$OUT/${load}_${tgt}_r$r.txt" | head -1)
  errs=$(awk '/^errors/ { print $2 }' "$OUT/${load}_${tgt}_r$r.txt" | head -1)
  printf '%s\t%s\t%s\t%s\t%s\n' "$load" "$tgt" "$r" "${cpu:-NA}" "${errs:-NA}" >>"$OUT/runs.tsv"
  log "$load/$tgt/r$r: ${cpu:-NA} us/request of server CPU, errors ${errs:-NA}"
}

for r in $(seq 1 "$ROUNDS"); do
  # A different order each round, so drift on a shared box hits every target alike.
  case $((r % 2)) in
    1) order="plain tls redis-plain redis-tls" ;;
    0) order="redis-tls redis-plain tls plain" ;;
  esac
  for load in 1e b100; do
    for tgt in $order; do run_one "$load" "$tgt" "$r"; done
  done
done

# Medians per load and target, and the ratios TLS / plaintext.
python3 - "$OUT/runs.tsv" <<'EOF' | tee "$OUT/summary.md"
import sys, statistics, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    load, tgt, r, cpu, errs = line.split("\t")
    if cpu != "NA":
        runs[(load, tgt)].append(float(cpu))
med = {k: statistics.median(v) for k, v in runs.items()}
print("| load | proxy CPU/request, plaintext | over TLS | TLS adds | Redis CPU/request, proxy->Redis plaintext | over TLS | TLS adds |")
print("|---|---|---|---|---|---|---|")
for load, name in [("1e", "1 entity, open loop 20k req/s"), ("b100", "100 entities, closed loop 16x1")]:
    p, t = med.get((load, "plain")), med.get((load, "tls"))
    rp, rt = med.get((load, "redis-plain")), med.get((load, "redis-tls"))
    f = lambda x: "NA" if x is None else f"{x:.2f} µs"
    g = lambda a, b: "NA" if a is None or b is None else f"{(b / a - 1) * 100:+.0f}%"
    print(f"| {name} | {f(p)} | {f(t)} | {g(p, t)} | {f(rp)} | {f(rt)} | {g(rp, rt)} |")
print()
# The steadier figure on a drifting box: TLS/plaintext within each round, then the median.
rounds = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    load, tgt, r, cpu, errs = line.split("\t")
    if cpu != "NA":
        rounds[(load, r)][tgt] = float(cpu)
for load in ("1e", "b100"):
    for a, b, what in (("plain", "tls", "proxy"), ("redis-plain", "redis-tls", "Redis")):
        ratios = [v[b] / v[a] for (l, _), v in sorted(rounds.items()) if l == load and a in v and b in v]
        if ratios:
            print(f"{load}: {what} CPU per request, TLS / plaintext within each round: median {statistics.median(ratios):.3f} {[round(x, 3) for x in ratios]}")
print()
print("runs per cell:", {f"{k[0]}/{k[1]}": [round(x, 2) for x in v] for k, v in sorted(runs.items())})
EOF
