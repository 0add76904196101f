#!/usr/bin/env bash
# What a Redis Cluster costs per entity served: featureproxy on a local cluster (3 masters +
# 3 replicas) against featureproxy on one standalone redis-server, hot cache on and with
# --bypass-cache, plus a cluster-aware client (redis-benchmark --cluster) straight on the cluster
# and the same client on the standalone Redis, under the same loads, interleaved round by round.
#
#   benches/cluster.sh              full run (about 12 minutes): writes its section of
#                                   benches/RESULTS.md (between the cluster.sh markers; the rest of
#                                   the file is left alone) and per-run files in
#                                   benches/results/cluster/
#   benches/cluster.sh --quick      smoke (about a minute): small and short, into a temporary
#                                   directory, RESULTS.md untouched (a copy with the section is left
#                                   beside the runs); checks that every run answered without errors
#                                   and that every server's CPU was measured, never what the
#                                   figures are
#   --rounds N                      rounds (default 3; 1 with --quick); each runs every load against
#                                   every target, in a different order each round; medians reported
#   --out DIR                       where per-run files go
#   --no-nice                       don't run every process at nice -10 (done when allowed, the same
#                                   for all of them, so unrelated work disturbs them less)
#
# Loads, over user_features (16 x f32), Zipf 0.99 over 200,000 entities seeded through each proxy:
#   1e    1 entity per GET, open loop at 10,000 req/s over 4 connections;
#   b100  100 entities per GET, closed loop, 16 connections x 1 in flight.
# redis-benchmark has no rate limit and no Zipf: it runs closed loop, 16 connections, uniform keys
# over its own key space (-r 200000, values of the size of a stored row), `-t get` for 1e and
# `-t get -P 100` (100 single-key GETs per round trip: a cluster has no cross-slot MGET) for b100.
# CPU: `loadgen run --server-pid` for the proxy and every redis-server behind the target (all six
# cluster nodes, or the standalone one); for redis-benchmark, utime+stime from /proc/PID/stat of the
# redis-servers before and after the run.
#
# Binaries: FEATUREPROXY_BIN and LOADGEN_BIN, else $CARGO_TARGET_DIR/release/{featureproxy,loadgen}
# (target/ by default), built with cargo build --release when missing. Needs redis-server,
# redis-cli and redis-benchmark (Debian's redis-tools), and curl for the proxy's /metrics.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0; ROUNDS=""; OUT=""; NICE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS="${2:?--rounds needs a number}"; shift ;;
    --out) OUT="${2:?--out needs a directory}"; shift ;;
    --no-nice) NICE=0 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "cluster.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "${ROUNDS:-x}" in x) ;; *[!0-9]*|0) echo "cluster.sh: --rounds wants a positive integer, got $ROUNDS" >&2; exit 2 ;; esac

T_START=$(date +%s)
log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# ---- sizes -------------------------------------------------------------------------------------
if [ $QUICK = 1 ]; then
  ENTITIES=20000; RATE=2000; DUR=2s; WARM=1s; ROUNDS=${ROUNDS:-1}
else
  ENTITIES=200000; RATE=10000; DUR=12s; WARM=3s; ROUNDS=${ROUNDS:-3}
fi
DUR_S=${DUR%s}
# user_features' max_staleness is 10 min and a full round takes about 3.5: rows older than this are
# re-seeded before the next round, so no run serves EXPIRED defaults (never cached) for rows.
SEED_MAX_AGE=300
TICK=$(getconf CLK_TCK 2>/dev/null || echo 100)

if [ -z "$OUT" ]; then
  if [ $QUICK = 1 ]; then OUT=$(mktemp -d /tmp/fp-cluster.XXXXXX); else OUT="$ROOT/benches/results/cluster"; fi
fi
mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
RUN_DIR=$(mktemp -d /tmp/fp-cluster-run.XXXXXX)
TSV="$OUT/runs.tsv"; CMDS="$OUT/commands.tsv"; EXTRA="$OUT/extra.tsv"
rm -f "$TSV" "$CMDS" "$EXTRA" "$OUT"/*.json "$OUT"/*.txt "$OUT"/*.err "$OUT"/*.log "$OUT"/*.csv "$OUT"/*.prom 2>/dev/null

# ---- binaries ----------------------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
pick_bin() { # OVERRIDE NAME CARGO_ARGS
  local override=$1 name=$2 cargo_args=$3
  if [ -n "$override" ]; then
    [ -x "$override" ] || die "$name: $override is not an executable (unset the override or fix the path)"
    echo "$override"; return
  fi
  local bin="$TARGET_DIR/release/$name"
  if [ ! -x "$bin" ]; then
    log "building $name (cargo build --release $cargo_args) into $TARGET_DIR"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release $cargo_args 2>&1 | tail -2) >&2
    [ -x "$bin" ] || die "cargo build --release $cargo_args did not produce $bin"
  fi
  echo "$bin"
}
FP=$(pick_bin "${FEATUREPROXY_BIN:-}" featureproxy "--bin featureproxy") || exit 1
LG=$(pick_bin "${LOADGEN_BIN:-}" loadgen "-p loadgen") || exit 1
rel() { local p=${1//$ROOT\//}; echo "$p"; }
for t in redis-server redis-cli redis-benchmark curl; do
  command -v $t >/dev/null || die "$t is not installed (redis-server, redis-tools, curl)"
done

PRIO=()
if [ $NICE = 1 ] && [ "$(nice -n -10 nice 2>/dev/null)" = "-10" ]; then PRIO=(nice -n -10); fi
PRIO_NOTE="at default priority"
[ ${#PRIO[@]} -gt 0 ] && PRIO_NOTE="all at nice -10 (the same for every process)"

# ---- processes ---------------------------------------------------------------------------------
NODE_PIDS=(); SA_PID=""; PXC_PID=""; PXS_PID=""
cleanup() {
  local p
  for p in $PXC_PID $PXS_PID $SA_PID "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in $PXC_PID $PXS_PID $SA_PID "${NODE_PIDS[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

USED_PORTS=" "
# Free: nothing listens and the port can be bound (a port held by an outgoing connection refuses
# connections yet cannot be bound).
is_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null &&
    python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}
# A free port; with "bus", a cluster node's port whose bus port (+10000) is free too. Cluster ports
# are taken in 12000-21999 (bus 22000-31999), below Linux's ephemeral range (32768-60999), so that no
# outgoing connection grabs one between this check and the node's start.
free_port() {
  local p
  while :; do
    p=$(( (RANDOM % 20000) + 33000 ))
    [ "${1:-}" = bus ] && p=$(( (RANDOM % 10000) + 12000 ))
    case "$USED_PORTS" in *" $p "*|*" $((p + 10000)) "*) continue ;; esac
    is_free "$p" || continue
    if [ "${1:-}" = bus ]; then is_free $((p + 10000)) || continue; USED_PORTS="$USED_PORTS$((p + 10000)) "; fi
    USED_PORTS="$USED_PORTS$p "
    echo "$p"; return
  done
}
wait_port() { # port seconds
  local i
  for ((i = 0; i < $2 * 20; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}
wait_for() { # SECS CMD...: until CMD succeeds
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do [ $SECONDS -lt $end ] || return 1; sleep 0.05; done
}

# The cluster: the node arguments of /work/shared/notes/redis-cluster.md section 4.
PORTS=()
for i in 1 2 3 4 5 6; do PORTS+=("$(free_port bus)"); done
SERVERS=()
for p in "${PORTS[@]}"; do
  mkdir -p "$RUN_DIR/$p"
  ${PRIO[@]+"${PRIO[@]}"} redis-server --port "$p" --bind 127.0.0.1 --dir "$RUN_DIR/$p" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
    --cluster-require-full-coverage no --repl-diskless-sync-delay 0 \
    --save '' --appendonly no --logfile "$OUT/node-$p.log" --daemonize no &
  NODE_PIDS+=($!)
done
T_CL=$(date +%s%N)
for p in "${PORTS[@]}"; do wait_port "$p" 20 || die "cluster node $p did not start (see $OUT/node-$p.log)"; done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${PORTS[@]}") --cluster-replicas 1 --cluster-yes \
  >"$OUT/cluster-create.log" 2>&1 || die "redis-cli --cluster create failed (see $OUT/cluster-create.log)"
healthy() { # every node: cluster_state ok, 3 masters + 3 replicas, replicas' links up
  local p
  for p in "${PORTS[@]}"; do
    redis-cli -p "$p" cluster info | grep -q '^cluster_state:ok' || return 1
    [ "$(redis-cli -p "$p" cluster nodes | grep -v fail | grep -c master)" -eq 3 ] || return 1
    [ "$(redis-cli -p "$p" cluster nodes | grep -v fail | grep -c slave)" -eq 3 ] || return 1
    redis-cli -p "$p" role | head -1 | grep -qx slave || continue
    redis-cli -p "$p" info replication | grep -q '^master_link_status:up' || return 1
  done
}
wait_for 30 healthy || die "the cluster did not become healthy within 30 s (see $OUT/node-*.log)"
CL_MS=$(( ($(date +%s%N) - T_CL) / 1000000 ))
MASTERS=(); REPLICAS=(); ROLE_OF=()
for i in "${!PORTS[@]}"; do
  role=$(redis-cli -p "${PORTS[$i]}" role | head -1)
  ROLE_OF+=("$role")
  if [ "$role" = master ]; then MASTERS+=("${PORTS[$i]}"); else REPLICAS+=("${PORTS[$i]}"); fi
  SERVERS+=("redis-server --port ${PORTS[$i]} --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 --cluster-require-full-coverage no --repl-diskless-sync-delay 0 --save '' --appendonly no    # pid ${NODE_PIDS[$i]}, $role")
done
[ ${#MASTERS[@]} = 3 ] || die "expected 3 masters, found ${#MASTERS[@]}"
SERVERS+=("redis-cli --cluster create $(printf '127.0.0.1:%s ' "${PORTS[@]}")--cluster-replicas 1 --cluster-yes")
log "cluster up in ${CL_MS} ms: masters ${MASTERS[*]}, replicas ${REPLICAS[*]}"

SAP=$(free_port)
${PRIO[@]+"${PRIO[@]}"} redis-server --port "$SAP" --bind 127.0.0.1 --save '' --appendonly no --dir "$RUN_DIR" \
  >"$OUT/standalone.log" 2>&1 &
SA_PID=$!
wait_port "$SAP" 20 || die "redis-server did not start on $SAP (see $OUT/standalone.log)"
SERVERS+=("redis-server --port $SAP --bind 127.0.0.1 --save '' --appendonly no    # pid $SA_PID, standalone")

CL_URL="redis-cluster://127.0.0.1:${PORTS[0]}?node=127.0.0.1:${PORTS[1]}&node=127.0.0.1:${PORTS[2]}"
PXC=$(free_port); PXC_ST=$(free_port); PXS=$(free_port); PXS_ST=$(free_port)
start_proxy() { # PORT STATS_PORT REDIS_URL LOG; sets LAST_PID (no subshell: the shell can wait for it)
  ${PRIO[@]+"${PRIO[@]}"} "$FP" serve --config "$ROOT/examples/features.toml" --listen "127.0.0.1:$1" \
    --stats-listen "127.0.0.1:$2" --redis "$3" --shards 1 >"$4" 2>&1 &
  LAST_PID=$!
}
start_proxy "$PXC" "$PXC_ST" "$CL_URL" "$OUT/proxy-cluster.log"; PXC_PID=$LAST_PID
start_proxy "$PXS" "$PXS_ST" "redis://127.0.0.1:$SAP" "$OUT/proxy-standalone.log"; PXS_PID=$LAST_PID
wait_port "$PXC" 30 || die "featureproxy on the cluster did not start on $PXC (see $OUT/proxy-cluster.log)"
wait_port "$PXS" 30 || die "featureproxy on the standalone Redis did not start on $PXS (see $OUT/proxy-standalone.log)"
SERVERS+=("$(rel "$FP") serve --config examples/features.toml --listen 127.0.0.1:$PXC --stats-listen 127.0.0.1:$PXC_ST --redis \"$CL_URL\" --shards 1    # pid $PXC_PID, proxy on the cluster")
SERVERS+=("$(rel "$FP") serve --config examples/features.toml --listen 127.0.0.1:$PXS --stats-listen 127.0.0.1:$PXS_ST --redis redis://127.0.0.1:$SAP --shards 1    # pid $PXS_PID, proxy on the standalone Redis")
# The proxies' own health says when every node is connected.
wait_for 20 sh -c "curl -sf http://127.0.0.1:$PXC_ST/health" || log "warning: the cluster proxy's /health is not OK after 20 s"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- seeding -----------------------------------------------------------------------------------
LAST_SEED=0
seed() {
  local px name
  for px in "$PXC:cluster" "$PXS:standalone"; do
    name=${px#*:}
    local cmd=("$LG" seed --target "127.0.0.1:${px%%:*}" --view user_features --entities "$ENTITIES")
    printf 'seed/%s\t%s\n' "$name" "$(rel "${cmd[*]}")" >>"$CMDS"
    log "seeding $ENTITIES entities through the proxy on the $name"
    ${PRIO[@]+"${PRIO[@]}"} "${cmd[@]}" >>"$OUT/seed-$name.log" 2>&1 || die "seed failed (see $OUT/seed-$name.log)"
    tail -1 "$OUT/seed-$name.log" | sed 's/^/    /' >&2
  done
  LAST_SEED=$(date +%s)
}
seed
ROW_BYTES=$(redis-cli -p "$SAP" strlen "fp:user_features:v1:u:1")
[ "${ROW_BYTES:-0}" -gt 0 ] 2>/dev/null || die "no seeded row found on the standalone Redis (fp:user_features:v1:u:1)"
CL_KEYS=0
for p in "${MASTERS[@]}"; do CL_KEYS=$((CL_KEYS + $(redis-cli -p "$p" dbsize))); done
SA_KEYS=$(redis-cli -p "$SAP" dbsize)
log "rows are $ROW_BYTES bytes; keys after seeding: cluster masters $CL_KEYS, standalone $SA_KEYS"

# redis-benchmark's own keys (key:{tag}:NNN on the cluster, key:NNN standalone), values of a row's
# size: random SETs, enough that almost every key of -r ENTITIES exists (counted below).
RB_FILL_CL=(redis-benchmark --cluster -p "${MASTERS[0]}" -t set -r "$ENTITIES" -n $((ENTITIES * 10)) -d "$ROW_BYTES" -P 100 -c 16 -q)
RB_FILL_SA=(redis-benchmark -p "$SAP" -t set -r "$ENTITIES" -n $((ENTITIES * 5)) -d "$ROW_BYTES" -P 100 -c 16 -q)
printf 'fill/cluster\t%s\n' "${RB_FILL_CL[*]}" >>"$CMDS"; printf 'fill/standalone\t%s\n' "${RB_FILL_SA[*]}" >>"$CMDS"
log "filling redis-benchmark's key spaces"
"${RB_FILL_CL[@]}" >"$OUT/rb-fill-cluster.log" 2>&1 || die "redis-benchmark --cluster fill failed (see $OUT/rb-fill-cluster.log)"
"${RB_FILL_SA[@]}" >"$OUT/rb-fill-standalone.log" 2>&1 || die "redis-benchmark fill failed (see $OUT/rb-fill-standalone.log)"
CL_KEYS2=0
for p in "${MASTERS[@]}"; do CL_KEYS2=$((CL_KEYS2 + $(redis-cli -p "$p" dbsize))); done
RB_KEYS_CL=$((CL_KEYS2 - CL_KEYS)); RB_KEYS_SA=$(( $(redis-cli -p "$SAP" dbsize) - SA_KEYS ))
log "redis-benchmark keys: cluster $RB_KEYS_CL (of $((ENTITIES * 3)): -r per node), standalone $RB_KEYS_SA (of $ENTITIES)"

# ---- runs --------------------------------------------------------------------------------------
metric_sum() { # STATS_PORT METRIC [LABEL_FILTER]: the sum of a metric's samples
  curl -sf "http://127.0.0.1:$1/metrics" 2>/dev/null | awk -v m="$2" -v f="${3:-}" '
    $1 ~ "^" m "([{]|$)" && (f == "" || index($1, f)) { s += $NF } END { printf "%d\n", s }'
}
cpu_ticks() { # PID -> utime+stime in ticks
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

declare -A RB_RPS   # load/target -> last measured req/s, sizes the next run to about DUR
FAILS=0
TARGETS=(pc pcb ps psb rbc rbs)
LOADS=(1e b100)
ALL_NODE_PIDS="${NODE_PIDS[*]}"

# run_loadgen LOAD TARGET ROUND
run_loadgen() {
  local load=$1 tgt=$2 r=$3 target pids=() args=() st=""
  local label="cluster/$load/$tgt/r$r" file="${load}_${tgt}_r$r"
  case $load in
    1e) args=(--rate "$RATE" --connections 4) ;;
    b100) args=(--closed --batch 100 --connections 16 --inflight 1) ;;
  esac
  case $tgt in
    pc|pcb) target="127.0.0.1:$PXC"; pids=("$PXC_PID" "${NODE_PIDS[@]}"); st=$PXC_ST ;;
    ps|psb) target="127.0.0.1:$PXS"; pids=("$PXS_PID" "$SA_PID"); st=$PXS_ST ;;
  esac
  case $tgt in pcb|psb) args+=(--bypass-cache) ;; esac
  local cmd=("$LG" run --target "$target" --view user_features --entities "$ENTITIES" "${args[@]}"
    --duration "$DUR" --warmup "$WARM" --verify-every 16)
  local p
  for p in "${pids[@]}"; do cmd+=(--server-pid "$p"); done
  printf '%s\t%s\n' "$label" "$(rel "${cmd[*]}")" >>"$CMDS"
  local mv0 ask0 try0 down0 nerr0
  mv0=$(metric_sum "$st" featureproxy_cluster_redirects_total 'kind="moved"')
  ask0=$(metric_sum "$st" featureproxy_cluster_redirects_total 'kind="ask"')
  try0=$(metric_sum "$st" featureproxy_cluster_redirects_total 'kind="tryagain"')
  down0=$(metric_sum "$st" featureproxy_cluster_redirects_total 'kind="clusterdown"')
  nerr0=$(metric_sum "$st" featureproxy_cluster_node_errors_total)
  ${PRIO[@]+"${PRIO[@]}"} "${cmd[@]}" --label "$label" --json "$OUT/$file.json" --tsv "$TSV" --no-timeline \
    >"$OUT/$file.txt" 2>"$OUT/$file.err"
  local rc=$?
  [ $rc = 0 ] || FAILS=$((FAILS + 1))
  local mv ask try down nerr
  mv=$(( $(metric_sum "$st" featureproxy_cluster_redirects_total 'kind="moved"') - mv0 ))
  ask=$(( $(metric_sum "$st" featureproxy_cluster_redirects_total 'kind="ask"') - ask0 ))
  try=$(( $(metric_sum "$st" featureproxy_cluster_redirects_total 'kind="tryagain"') - try0 ))
  down=$(( $(metric_sum "$st" featureproxy_cluster_redirects_total 'kind="clusterdown"') - down0 ))
  nerr=$(( $(metric_sum "$st" featureproxy_cluster_node_errors_total) - nerr0 ))
  printf '%s\tmoved=%d ask=%d tryagain=%d clusterdown=%d node_errors=%d rc=%d\n' "$label" "$mv" "$ask" "$try" "$down" "$nerr" "$rc" >>"$EXTRA"
  local line
  line=$(awk '/^requests|^errors/ { print; next } /^server cpu/ { cpu[++n] = $0 }
    END { print cpu[n] }' "$OUT/$file.txt" | tr -s ' ' | paste -sd'|' -)
  log "$label: rc=$rc moved=$mv ${line:0:200}"
}

# run_rb LOAD TARGET ROUND: redis-benchmark, the redis-servers' CPU from /proc before and after.
run_rb() {
  local load=$1 tgt=$2 r=$3 args=() pids=()
  local label="cluster/$load/$tgt/r$r" file="${load}_${tgt}_r$r"
  case $tgt in
    rbc) args=(--cluster -p "${MASTERS[0]}"); pids=("${NODE_PIDS[@]}") ;;
    rbs) args=(-p "$SAP"); pids=("$SA_PID") ;;
  esac
  local pl=1; [ $load = b100 ] && pl=100
  local rps=${RB_RPS[$load/$tgt]:-}
  if [ -z "$rps" ]; then # a short pilot run sizes the first measured one
    local pn=$((pl == 1 ? 100000 : 1000000)); [ $QUICK = 1 ] && pn=$((pn / 4))
    rps=$(redis-benchmark "${args[@]}" -t get -n "$pn" -c 16 -r "$ENTITIES" -P "$pl" -d "$ROW_BYTES" --csv 2>"$OUT/$file.pilot.err" \
      | awk -F'"' '$2 == "GET" { printf "%d", $4 }')
    [ -n "$rps" ] && [ "$rps" -gt 0 ] || { log "$label: the pilot run of redis-benchmark failed (see $OUT/$file.pilot.err)"; FAILS=$((FAILS + 1)); return; }
  fi
  local n=$(( rps * DUR_S ))
  local cmd=(redis-benchmark "${args[@]}" -t get -n "$n" -c 16 -r "$ENTITIES" -P "$pl" -d "$ROW_BYTES" --csv)
  printf '%s\t%s\n' "$label" "${cmd[*]}" >>"$CMDS"
  local p before=() after=() t0 t1
  for p in "${pids[@]}"; do before+=("$(cpu_ticks "$p")"); done
  t0=$(date +%s%N)
  ${PRIO[@]+"${PRIO[@]}"} "${cmd[@]}" >"$OUT/$file.csv" 2>"$OUT/$file.err"
  local rc=$?
  t1=$(date +%s%N)
  for p in "${pids[@]}"; do after+=("$(cpu_ticks "$p")"); done
  [ $rc = 0 ] || FAILS=$((FAILS + 1))
  local i procs="" tot=0 d
  for i in "${!pids[@]}"; do
    d=$(( ${after[$i]} - ${before[$i]} )); tot=$((tot + d))
    procs="$procs${procs:+,}redis-server:${pids[$i]}=$d"
  done
  # TSV: label rps p50_us p99_us requests wall_s ticks_total per-pid ticks errors rc
  local errs
  errs=$(grep -ci 'error\|moved\|ask ' "$OUT/$file.err")
  awk -F'"' -v label="$label" -v n="$n" -v wall="$(( (t1 - t0) / 1000000 ))" -v tot="$tot" -v procs="$procs" \
    -v errs="$errs" -v rc="$rc" '$2 == "GET" {
      printf "%s\t%s\t%.0f\t%.0f\t%d\t%.3f\t%d\t%s\t%d\t%d\n", label, $4, $10 * 1000, $14 * 1000, n, wall / 1000, tot, procs, errs, rc
      found = 1 }
    END { if (!found) printf "%s\t-\t-\t-\t%d\t%.3f\t%d\t%s\t%d\t%d\n", label, n, wall / 1000, tot, procs, errs + 1, rc }' \
    "$OUT/$file.csv" >>"$OUT/rb.tsv"
  RB_RPS[$load/$tgt]=$(awk -F'"' '$2 == "GET" { printf "%d", $4 }' "$OUT/$file.csv")
  [ -n "${RB_RPS[$load/$tgt]}" ] || unset "RB_RPS[$load/$tgt]"
  log "$label: rc=$rc $(tail -1 "$OUT/$file.csv") cpu ${tot} ticks over $n GETs"
}

# Round r: the targets rotated by r-1, reversed every other round, and the loads alternated.
order() {
  local r=$1 n=${#TARGETS[@]} i list=()
  for ((i = 0; i < n; i++)); do list+=("${TARGETS[$(( (i + r - 1) % n ))]}"); done
  if [ $((r % 2)) = 0 ]; then
    for ((i = n - 1; i >= 0; i--)); do echo "${list[$i]}"; done
  else
    printf '%s\n' "${list[@]}"
  fi
}

rm -f "$OUT/rb.tsv"
log "${#TARGETS[@]} targets x ${#LOADS[@]} loads x $ROUNDS round(s) of ${WARM} + ${DUR}; files in $OUT"
for ((r = 1; r <= ROUNDS; r++)); do
  if [ $(( $(date +%s) - LAST_SEED )) -gt $SEED_MAX_AGE ]; then seed; fi
  mapfile -t ORDER < <(order "$r")
  loads=("${LOADS[@]}")
  [ $((r % 2)) = 0 ] && loads=("${LOADS[1]}" "${LOADS[0]}")
  log "round $r/$ROUNDS: ${ORDER[*]}"
  for load in "${loads[@]}"; do
    for tgt in "${ORDER[@]}"; do
      case $tgt in rb*) run_rb "$load" "$tgt" "$r" ;; *) run_loadgen "$load" "$tgt" "$r" ;; esac
    done
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
curl -sf "http://127.0.0.1:$PXC_ST/metrics" >"$OUT/proxy-cluster-metrics.prom" 2>/dev/null
curl -sf "http://127.0.0.1:$PXS_ST/metrics" >"$OUT/proxy-standalone-metrics.prom" 2>/dev/null
NODE_KEYS=$(grep '^featureproxy_cluster_node_keys_total' "$OUT/proxy-cluster-metrics.prom" | sed 's/featureproxy_cluster_node_keys_total//' | paste -sd' ' -)
REDIRECTS=$(grep '^featureproxy_cluster_redirects_total' "$OUT/proxy-cluster-metrics.prom" | sed 's/featureproxy_cluster_redirects_total//' | paste -sd' ' -)
REFRESHES=$(metric_sum "$PXC_ST" featureproxy_cluster_slot_map_refreshes_total)
MAPCHANGES=$(metric_sum "$PXC_ST" featureproxy_cluster_slot_map_changes_total)
NODE_ERRS=$(metric_sum "$PXC_ST" featureproxy_cluster_node_errors_total)
[ -s "$TSV" ] || die "no loadgen run produced a result (see $OUT/*.err)"

# ---- report ------------------------------------------------------------------------------------
# One awk pass over the commands, loadgen's TSV lines and redis-benchmark's: per load and target
# the medians over the rounds (CPU split into the proxy's and the redis-servers'), the ratios
# cluster / standalone within each round, and the capacity arithmetic.
tables() {
  awk -F'\t' -v rate="$RATE" -v tick="$TICK" -v masters=" ${MASTERS[*]} " -v nodepids="$ALL_NODE_PIDS" \
      -v ports="${PORTS[*]}" -v roles="${ROLE_OF[*]}" -v ent="$ENTITIES" '
    function med(list,   n, a, i, j, t) {
      n = split(list, a, " "); if (n == 0) return ""
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    function sig(v) { if (v == "") return "-"; v += 0; if (v >= 100) return sprintf("%.0f", v);
      if (v >= 10) return sprintf("%.1f", v); if (v >= 1) return sprintf("%.2f", v); return sprintf("%.3f", v) }
    function us(v) { if (v == "") return "-"; v += 0; if (v < 1000) return sprintf("%d µs", v); return sprintf("%.2f ms", v / 1000) }
    function add(k, v) { if (v != "" && v != "-") vals[k] = vals[k] " " v }
    function put(k, r, what, v) { add(k SUBSEP what, v); per[k, r, what] = v }
    FILENAME ~ /commands.tsv$/ { cmd[$1] = $2; next }
    FILENAME ~ /extra.tsv$/ { split($1, p, "/"); extra[p[2], p[3], substr(p[4], 2) + 0] = $2; next }
    FILENAME ~ /rb.tsv$/ {
      split($1, p, "/"); load = p[2]; tgt = p[3]; r = substr(p[4], 2) + 0; k = load SUBSEP tgt
      runs[k]++; if (r > rounds) rounds = r
      b = (load == "b100" ? 100 : 1)
      # redis-benchmark counts GETs: with -P 100 a "request" of the batch load is 100 of them.
      put(k, r, "rps", ($2 == "-" ? "-" : $2 / b)); put(k, r, "eps", $2); put(k, r, "p50", $3); put(k, r, "p99", $4)
      put(k, r, "err", $9 + ($10 != 0))
      cpu = $7 * 1e6 / tick / $5          # µs per GET = per entity
      put(k, r, "px", "-"); put(k, r, "rd", cpu); put(k, r, "tot", cpu)
      n = split($8, procs, ",")
      for (i = 1; i <= n; i++) { pp = procs[i]; sub(/^[^:]*:/, "", pp); split(pp, q, "="); add(k SUBSEP "pid" q[1], q[2] * 1e6 / tick / $5) }
      put(k, r, "hit", "-"); put(k, r, "stored", "-"); put(k, r, "deg", "-")
      next }
    FNR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    {
      split($1, p, "/"); load = p[2]; tgt = p[3]; r = substr(p[4], 2) + 0; k = load SUBSEP tgt
      runs[k]++; if (r > rounds) rounds = r
      b = (load == "b100" ? 100 : 1)
      put(k, r, "rps", $col["achieved_rps"]); put(k, r, "eps", $col["entities_per_s"])
      put(k, r, "p50", $col["p50_us"]); put(k, r, "p99", $col["p99_us"]); put(k, r, "err", $col["errors"])
      put(k, r, "stored", $col["fresh"] + $col["stale"]); put(k, r, "deg", $col["degraded"])
      put(k, r, "hit", $col["cached_share"])
      tot = $col["server_cpu_us_per_entity"]
      n = split($col["server_cpu"], procs, ",")
      px = ""; rd = 0
      for (i = 1; i <= n; i++) {
        pp = procs[i]; name = pp; sub(/:.*/, "", name); sub(/^[^:]*:/, "", pp); split(pp, q, "="); pid = q[1]
        split(q[2], re, "/"); e = re[2] + 0
        if (name ~ /featureproxy/) px = e; else { rd += e; add(k SUBSEP "pid" pid, e) }
      }
      put(k, r, "px", px); put(k, r, "rd", rd); put(k, r, "tot", tot)
    }
    function ratio(load, what, a, b, field,   r, list, x, y, shown) {
      list = ""; shown = ""
      for (r = 1; r <= rounds; r++) {
        x = per[load SUBSEP a, r, field]; y = per[load SUBSEP b, r, field]
        if (x == "" || x == "-" || y == "" || y == "-" || y + 0 <= 0) continue
        list = list " " x / y; shown = shown (shown == "" ? "" : ", ") sprintf("%.2f", x / y)
      }
      if (list == "") return ""
      rat[load, a, field] = med(list)
      if (what != "") printf "| %s | %s | **%.2fx** | %s |\n", title[load], what, med(list), shown
      return med(list)
    }
    END {
      title["1e"] = "1 entity, open loop " rate " req/s"; title["b100"] = "100 entities, closed loop 16 x 1"
      nl = split("1e b100", loads, " "); nt = split("pc pcb ps psb rbc rbs", tgts, " ")
      tname["pc"] = "proxy -> cluster, hot cache on"; tname["pcb"] = "proxy -> cluster, --bypass-cache"
      tname["ps"] = "proxy -> standalone, hot cache on"; tname["psb"] = "proxy -> standalone, --bypass-cache"
      tname["rbc"] = "redis-benchmark --cluster -> cluster"; tname["rbs"] = "redis-benchmark -> standalone"
      pair["pc"] = "ps"; pair["pcb"] = "psb"; pair["rbc"] = "rbs"
      np = split(ports, port, " "); split(roles, role, " "); split(nodepids, npid, " ")
      for (l = 1; l <= nl; l++) {
        load = loads[l]
        for (t = 1; t <= nt; t++) if (tgts[t] in pair) ratio(load, "", tgts[t], pair[tgts[t]], "tot")
        print "### " (load == "1e" ? "1 entity per GET: loadgen open loop at " rate " req/s, 4 connections (redis-benchmark: closed loop, 16 connections, `-t get`)" : "100 entities per GET: closed loop, 16 connections x 1 in flight (redis-benchmark: `-t get -P 100`, 100 GETs per round trip)")
        print ""
        print "| target | req/s | entities/s | p50 | p99 | proxy CPU µs/entity | Redis CPU µs/entity (sum of nodes) | **total µs/entity** | total cluster / standalone | hot-cache hits | DEGRADED | errors | MOVED | command (round 1) |"
        print "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        for (t = 1; t <= nt; t++) {
          k = load SUBSEP tgts[t]; if (!runs[k]) continue
          rr = ((load, tgts[t], "tot") in rat) ? sprintf("**%.2fx**", rat[load, tgts[t], "tot"]) : "-"
          hit = med(vals[k SUBSEP "hit"]); hit = (hit == "" ? "-" : sprintf("%.1f%%", 100 * hit))
          deg = med(vals[k SUBSEP "deg"]); deg = (deg == "" ? "-" : sprintf("%.2f%%", 100 * deg))
          mv = "-"
          if (tgts[t] == "pc" || tgts[t] == "pcb") { mv = ""; for (r = 1; r <= rounds; r++) { x = extra[load, tgts[t], r]; sub(/ .*/, "", x); sub(/moved=/, "", x); mv = mv (mv == "" ? "" : ", ") x } }
          printf "| %s | %.0f | %.0f | %s | %s | %s | %s | **%s** | %s | %s | %s | %s | %s | `%s` |\n", tname[tgts[t]],
            med(vals[k SUBSEP "rps"]), med(vals[k SUBSEP "eps"]), us(med(vals[k SUBSEP "p50"])), us(med(vals[k SUBSEP "p99"])),
            sig(med(vals[k SUBSEP "px"])), sig(med(vals[k SUBSEP "rd"])), sig(med(vals[k SUBSEP "tot"])), rr, hit, deg,
            med(vals[k SUBSEP "err"]), mv, cmd["cluster/" load "/" tgts[t] "/r1"]
        }
        print ""
        # Per node, for the cluster targets: who does the work.
        line = "Per cluster node, Redis CPU µs/entity (median): "
        for (t = 1; t <= nt; t++) {
          k = load SUBSEP tgts[t]; if (!runs[k] || (tgts[t] != "pc" && tgts[t] != "pcb" && tgts[t] != "rbc")) continue
          s = ""
          for (i = 1; i <= np; i++) s = s (s == "" ? "" : ", ") ":" port[i] " " (role[i] == "master" ? "M" : "R") " " sig(med(vals[k SUBSEP "pid" npid[i]]))
          line = line "_" tname[tgts[t]] "_: " s "; "
        }
        print line "(M master, R replica)."
        print ""
      }
      print "### Ratios cluster / standalone of the total CPU per entity (proxy + every redis-server)"
      print ""
      print "Each ratio divides two runs of the same round; the median over the rounds is given with each round'"'"'s value."
      print ""
      print "| load | ratio | median | per round |"
      print "|---|---|---|---|"
      for (l = 1; l <= nl; l++) {
        load = loads[l]
        ratio(load, "total, hot cache on", "pc", "ps", "tot")
        ratio(load, "total, --bypass-cache", "pcb", "psb", "tot")
        ratio(load, "proxy process only, hot cache on", "pc", "ps", "px")
        ratio(load, "proxy process only, --bypass-cache", "pcb", "psb", "px")
        ratio(load, "redis-servers only, hot cache on", "pc", "ps", "rd")
        ratio(load, "redis-servers only, --bypass-cache", "pcb", "psb", "rd")
        ratio(load, "redis-benchmark: redis-servers only", "rbc", "rbs", "tot")
      }
      print ""
      # ---- capacity on paper -----------------------------------------------------------------
      print "### On paper: a deployment for 1,000,000 lookups/s"
      print ""
      print "From the medians above (proxy -> cluster). Assumptions: a lookup is one entity; every process may use at most 50% of its core (headroom 50%); a redis-server is one thread, so a master is at most one core, and with 50% headroom a master may spend 0.5 core-s/s; reads go to the masters (`read_from = \"primary\"`, the default), so replicas only replay writes (their CPU here is the replication of the seeds and pings: ~0); the hot-cache hit ratio is the one measured in the run (Zipf 0.99 over " ent " entities, `hot_cache_ttl = 1s`; a larger key space or a lower rate per proxy hits less, the --bypass-cache rows are the 0% bound); the proxy'"'"'s cost per entity is taken as flat in the rate (a busier proxy batches more per wake-up, so this errs high: the 1-entity rows come from 10,000 req/s per proxy, where wake-ups dominate, an upper bound; the batch rows ran the proxy at saturation, closer to a loaded proxy). The proxy splits a batch into ~one MGET per key whatever the number of masters, so the Redis CPU per entity does not shrink with more masters. Last columns, for scale: the same arithmetic with the standalone rows'"'"' costs (one standalone Redis cannot give more than one core: that is what the cluster is for)."
      print ""
      print "| load (batch) | cache | proxy µs/entity | proxy cores = 1e6 x µs / 1e6 / 0.5 | Redis (masters) µs/entity | masters = 1e6 x µs / 1e6 / 0.5 | standalone costs: proxy µs / Redis µs per entity -> proxy cores, Redis cores |"
      print "|---|---|---|---|---|---|---|"
      for (l = 1; l <= nl; l++) {
        load = loads[l]
        for (t = 1; t <= 2; t++) {
          tg = (t == 1 ? "pc" : "pcb"); k = load SUBSEP tg; if (!runs[k]) continue
          pxv = med(vals[k SUBSEP "px"]); ms = 0
          for (i = 1; i <= np; i++) if (role[i] == "master") ms += med(vals[k SUBSEP "pid" npid[i]])
          hit = med(vals[k SUBSEP "hit"])
          ks = load SUBSEP (t == 1 ? "ps" : "psb"); spx = med(vals[ks SUBSEP "px"]); srd = med(vals[ks SUBSEP "rd"])
          printf "| %s | %s | %s | 1e6 x %s / 1e6 / 0.5 = %.1f cores -> **%d** | %s | 1e6 x %s / 1e6 / 0.5 = %.1f -> **%d master(s)** (+ as many replicas) | %s / %s -> %.1f, %.1f |\n",
            (load == "1e" ? "1 entity per GET" : "100 entities per GET"), (t == 1 ? sprintf("on (%.0f%% hits)", 100 * hit) : "--bypass-cache (0% hits)"),
            sig(pxv), sig(pxv), pxv * 2, ceil(pxv * 2), sig(ms), sig(ms), ms * 2, ceil(ms * 2), sig(spx), sig(srd), spx * 2, srd * 2
        }
      }
      print ""
    }
    function ceil(x) { return (x == int(x)) ? x : int(x) + 1 }' "$CMDS" "$EXTRA" "$OUT/rb.tsv" "$TSV"
}

tables >"$RUN_DIR/tables.md" || die "the report's tables could not be computed"
# The DEGRADED paragraph, from the runs' statuses, their node call errors and the proxy's counters.
deg_note() { # RUNS_TSV EXTRA_TSV METRICS_PROM
  awk -F'\t' -v prom="$3" '
    FILENAME == ARGV[1] { if (split($2, kv, " ")) for (i in kv) if (kv[i] ~ /^node_errors=/) { v = kv[i]; sub(/.*=/, "", v); nerr[$1] = v }; next }
    FNR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    $col["degraded"] + 0 > 0 {
      e = ($1 in nerr) ? nerr[$1] : "?"; if (e == "0") quiet++
      list = list sprintf("%s`%s` %.2f%% (%s node call errors; p99 %.1f ms, max %.1f ms)", (n++ ? ", " : ""), $1, 100 * $col["degraded"], e, $col["p99_us"] / 1000, $col["max_us"] / 1000) }
    END {
      if (!n) exit
      while ((getline l < prom) > 0) {
        if (l ~ /^featureproxy_redis_errors_total/) { sub(/^featureproxy_redis_errors_total/, "", l); rerr = rerr (rerr == "" ? "" : " ") l }
        else if (l ~ /^featureproxy_entities_total[{]view="user_features",status="degraded"[}]/) { split(l, a, " "); deg = a[2] }
        else if (l ~ /^featureproxy_breaker_transitions_total /) { split(l, a, " "); bt = a[2] }
        else if (l ~ /^featureproxy_breaker_rejections_total /) { split(l, a, " "); br = a[2] }
        else if (l ~ /^featureproxy_cluster_slot_map_changes_total /) { split(l, a, " "); mc = a[2] }
      }
      printf "DEGRADED answers (share of the entities; node call errors in the same run): %s. Nothing was redirected and no failover happened (slot-map changes: %s). Each is a key still unread when its request'"'"'s deadline passed (the proxy'"'"'s `default_deadline`, 50 ms, as loadgen sends none), served with defaults: in the saturated closed loop one proxy thread has ~1,600 keys, i.e. ~1,600 one-key MGETs, in flight. Node calls that timed out are counted in `featureproxy_redis_errors_total` (`%s` over the run) and `featureproxy_cluster_node_errors_total` (breaker transitions over the run: %s, calls rejected by an open breaker: %s)", list, mc, rerr, bt, br
      if (quiet) printf "; in %d run(s) with DEGRADED answers and no node call error, requests'"'"' deadlines passed while their keys still waited in the proxy, which only `featureproxy_entities_total{status=\"degraded\"}` counts", quiet
      printf ". All DEGRADED entities on the cluster proxy over the run: %s.\n", deg
    }' "$2" "$1"
}
DEG_NOTE=$(deg_note "$TSV" "$EXTRA" "$OUT/proxy-cluster-metrics.prom")
T_END=$(date +%s)
ELAPSED=$(( T_END - T_START ))
SECTION="$RUN_DIR/section.md"
{
  echo "<!-- cluster.sh begin -->"
  echo "## Redis Cluster: CPU per entity, featureproxy on a cluster against a standalone Redis"
  echo
  [ $QUICK = 1 ] && { echo "**Quick smoke run (--quick): tiny and short, not a measurement.**"; echo; }
  echo "Generated by \`benches/cluster.sh$([ $QUICK = 1 ] && echo ' --quick') --rounds $ROUNDS\` on $(date -u '+%Y-%m-%d %H:%M UTC'); the run took $((ELAPSED / 60)) min $((ELAPSED % 60)) s (\`--quick\`: about a minute). This section is rewritten by each run of cluster.sh; the rest of the file is not."
  echo
  echo "- Targets: a local Redis Cluster of 3 masters + 3 replicas (the node arguments of the cluster recipe: \`--cluster-node-timeout 1000 --cluster-require-full-coverage no --repl-diskless-sync-delay 0\`, created with \`redis-cli --cluster create ... --cluster-replicas 1\`, healthy ${CL_MS} ms after the nodes were started) and one standalone redis-server beside it; two proxies (release, \`--shards 1\` each, examples/features.toml, default \`read_from = \"primary\"\`), one on each; and redis-benchmark $(redis-benchmark --version | awk '{print $2}'), a cluster-aware C client, straight on the cluster (\`--cluster\`) and on the standalone Redis."
  echo "- What is measured: the CPU time (user + system, every thread) of the proxy and of every redis-server behind the target (all six cluster nodes, or the standalone one) over each run's measured window, per entity answered: \`loadgen run --server-pid\` (repeated per process) for the proxies; for redis-benchmark, \`/proc/PID/stat\` of the redis-servers read just before and just after it (its whole run). $TICK ticks/s. loadgen and redis-benchmark themselves are not charged."
  echo "- $ENTITIES entities of \`user_features\` (16 x f32, $ROW_BYTES bytes stored per row) seeded into both stores through their proxies (\`loadgen seed\`), re-seeded before a round when older than ${SEED_MAX_AGE}s; loadgen draws them Zipf 0.99 and verifies every 16th reply. redis-benchmark uses its own keys: \`-r $ENTITIES\` uniform over \`key:{tag}:NNN\` per master on the cluster ($RB_KEYS_CL keys exist) and \`key:NNN\` standalone ($RB_KEYS_SA), values of $ROW_BYTES bytes, filled beforehand with random SETs (commands in commands.tsv)."
  echo "- Loads: 1 entity per GET, loadgen open loop at $RATE req/s over 4 connections (a rate every target holds here); 100 entities per GET, closed loop, 16 connections x 1 in flight. redis-benchmark cannot pace itself: it runs closed loop, 16 connections, \`-t get\` for 1 entity (so at its own maximum rate, where Redis answers several requests per wake-up: its CPU per entity is not comparable with the open-loop rows, only with its standalone twin) and \`-t get -P 100\` for batches (100 single-key GETs per round trip on one connection; in cluster mode each connection is bound to one master and its keys carry that master's hash tag, so it never splits a batch across nodes as the proxy must; its p50/p99 are those of each GET of a pipeline, about one round trip of 100)."
  echo "- $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), Linux $(uname -r); everything on this host, sharing the cores: redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') x 7, two featureproxies, loadgen (1 sender + 1 receiver thread) or redis-benchmark, $PRIO_NOTE. Load average $LOAD_START at the start, $LOAD_END at the end. $ROUNDS round(s); each runs both loads against every target, in a different order each round; each loadgen run is $WARM of warm-up then $DUR measured, each redis-benchmark run about $DUR (sized from its previous run). Tables give the median over the rounds."
  echo "- The open-loop load is the like-for-like one: every proxy target does the same work at the same rate. In the closed loop each target runs as fast as it can, and a server that answers faster finds more requests per wake-up, so its CPU per entity is lower partly because of its speed (the standalone rows run 2-3x faster than the cluster ones).
- How the proxy reads a cluster: a coalesced batch is split by hash slot, one MGET per slot (random keys land in distinct slots, so a batch of 100 is ~100 one-key MGETs over 3 nodes), where the standalone Redis gets one MGET for the batch: that is the cost the batch rows show."
  echo
  cat "$RUN_DIR/tables.md"
  if [ -n "$DEG_NOTE" ]; then
    echo "$DEG_NOTE"
    echo
  fi
  echo "The proxy on the cluster over the whole run (its /metrics at the end): redirects \`$REDIRECTS\`; slot-map reads (CLUSTER SLOTS) $REFRESHES; slot-map changes $MAPCHANGES; node call errors $NODE_ERRS; keys read or written per node \`$NODE_KEYS\`. Per run: \`$(rel "$OUT")/extra.tsv\`."
  echo
  echo "Servers (ports and pids of this run; \`--server-pid\` in the commands above refers to these):"
  echo
  echo '```'
  printf '%s\n' "${SERVERS[@]}"
  echo '```'
  echo
  echo "Per-run reports (loadgen text and JSON, redis-benchmark CSV) and every command in order are in \`$(rel "$OUT")/\`."
  echo "<!-- cluster.sh end -->"
} >"$SECTION"

# Replaces the section between the markers, or appends it when the file has none. The file is read
# right before it is replaced, so that other scripts' sections written meanwhile are kept.
write_section() { # file
  local f=$1 tmp
  tmp=$(mktemp "$(dirname "$f")/.RESULTS.cluster.XXXXXX")
  [ -f "$f" ] || : >"$f"
  if grep -q '^<!-- cluster.sh begin -->' "$f"; then
    awk -v sec="$SECTION" '
      /^<!-- cluster.sh begin -->/ { while ((getline l < sec) > 0) print l; skip = 1; next }
      skip && /^<!-- cluster.sh end -->/ { skip = 0; next }
      !skip { print }' "$f" >"$tmp"
  else
    { cat "$f"; [ -s "$f" ] && echo; cat "$SECTION"; } >"$tmp"
  fi
  chmod --reference="$f" "$tmp" 2>/dev/null
  mv "$tmp" "$f"
}
if [ $QUICK = 1 ]; then
  MD="$OUT/RESULTS-quick.md"
  cp "$ROOT/benches/RESULTS.md" "$MD" 2>/dev/null
  write_section "$MD"
else
  MD="$ROOT/benches/RESULTS.md"
  write_section "$MD"
fi
log "wrote the cluster.sh section of $MD (run took ${ELAPSED}s)"

# ---- checks ------------------------------------------------------------------------------------
EXPECTED_LG=$(( 4 * ${#LOADS[@]} * ROUNDS )); EXPECTED_RB=$(( 2 * ${#LOADS[@]} * ROUNDS ))
GOT_LG=$(($(wc -l <"$TSV") - 1)); GOT_RB=$(wc -l <"$OUT/rb.tsv" 2>/dev/null || echo 0)
BAD=$(awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
  $col["errors"] != 0 || $col["server_cpu_us_per_request"] == "-" || $col["server_cpu_us_per_request"] + 0 <= 0 { print $1 }' "$TSV")
DEG_RUNS=$(awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next } $col["degraded"] + 0 > 0 { printf "%s (%.2f%%) ", $1, 100 * $col["degraded"] }' "$TSV")
BAD_RB=$(awk -F'\t' '$9 != 0 || $10 != 0 || $7 + 0 <= 0 { print $1 }' "$OUT/rb.tsv" 2>/dev/null)
[ "$GOT_LG" = "$EXPECTED_LG" ] || { log "$GOT_LG of $EXPECTED_LG loadgen runs produced a result"; FAILS=$((FAILS + 1)); }
[ "$GOT_RB" = "$EXPECTED_RB" ] || { log "$GOT_RB of $EXPECTED_RB redis-benchmark runs produced a result"; FAILS=$((FAILS + 1)); }
[ -z "$BAD" ] || { log "loadgen runs with errors or without a server CPU figure: $(echo $BAD)"; FAILS=$((FAILS + 1)); }
[ -z "$DEG_RUNS" ] || log "note: runs with DEGRADED answers (past the proxy's deadline, see the section): $DEG_RUNS"
[ -z "$BAD_RB" ] || { log "redis-benchmark runs with errors or without CPU: $(echo $BAD_RB)"; FAILS=$((FAILS + 1)); }
[ $FAILS = 0 ] || die "$FAILS problem(s) (see $OUT)"
log "all $((EXPECTED_LG + EXPECTED_RB)) runs answered without errors, every server's CPU measured"
