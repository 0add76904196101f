#!/usr/bin/env bash
# What each answer costs the servers: CPU per request and per entity of featureproxy (hot cache on,
# and with --bypass-cache), Redis directly, twemproxy and the protocol's floor (`loadgen floor`),
# under the same loads, interleaved round by round so that drift on a shared box hits all alike.
#
#   benches/cost.sh                 full run (about 20 minutes): writes its section of
#                                   benches/RESULTS.md (between the cost.sh markers; the rest of the
#                                   file is left alone) and per-run files in benches/results/cost/
#   benches/cost.sh --quick         smoke (about a minute): small and short, into a temporary
#                                   directory, RESULTS.md untouched; checks that every run answered
#                                   without errors and that every server's CPU was measured, never
#                                   what the figures are
#   --rounds N                      rounds (default 3; 1 with --quick); each runs every load against
#                                   every target, in a different order each round; medians reported
#   --out DIR                       where per-run files go
#   --no-nice                       don't run every process at nice -10 (done when allowed, the same
#                                   for all of them, so unrelated work disturbs them less)
#   --no-install                    don't apt-get install nutcracker when it is missing
#
# Loads: 1 entity per GET at a fixed open-loop rate (--rate 20000, 4 connections), and 100
# entities per GET in a closed loop (16 connections x 1 in flight), over user_features (16 x f32),
# Zipf 0.99 over 1,000,000 entities seeded once through the proxy (re-seeded between rounds only
# if the rows would otherwise grow older than the view's max_staleness within the next round);
# the 1-entity load over the first 1,000 of them ("hot": a hot set that fits the cache), for
# the proxies, Redis and the floor; and 1 entity per GET in a closed loop of 50 connections x 1
# in flight ("c50": 50 callers in turn, for throughput), for the proxies, Redis and twemproxy. The proxy runs twice: with 2 shards (one per core here) and
# with 1 (what the README advises where the proxy shares its cores, as on this box).
# Every server process is charged with `loadgen run --server-pid` (utime+stime over the measured
# window): the proxy and Redis, twemproxy and Redis, Redis alone, the floor alone.
#
# Binaries: FEATUREPROXY_BIN and LOADGEN_BIN, else target/release/{featureproxy,loadgen} when newer
# than their sources, else built with cargo build --release. Needs redis-server; twemproxy
# (Debian's nutcracker) is installed when missing if this runs as root with apt-get, else skipped.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0; ROUNDS=""; OUT=""; NICE=1; INSTALL=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS="${2:?--rounds needs a number}"; shift ;;
    --out) OUT="${2:?--out needs a directory}"; shift ;;
    --no-nice) NICE=0 ;;
    --no-install) INSTALL=0 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "cost.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "${ROUNDS:-x}" in x) ;; *[!0-9]*|0) echo "cost.sh: --rounds wants a positive integer, got $ROUNDS" >&2; exit 2 ;; esac

log() { printf '[cost %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# ---- sizes -------------------------------------------------------------------------------------
RATE=20000
HOT_ENTITIES=1000
if [ $QUICK = 1 ]; then
  ENTITIES=20000; DUR=2s; WARM=1s; ROUNDS=${ROUNDS:-1}
else
  ENTITIES=1000000; DUR=15s; WARM=3s; ROUNDS=${ROUNDS:-3}
fi
# user_features' max_staleness is 10 min and a full round takes about 3: rows older than this are
# re-seeded before the next round, so no run serves EXPIRED defaults (never cached) for rows.
SEED_MAX_AGE=300

if [ -z "$OUT" ]; then
  if [ $QUICK = 1 ]; then OUT=$(mktemp -d /tmp/fp-cost.XXXXXX); else OUT="$ROOT/benches/results/cost"; fi
fi
mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
RUN_DIR=$(mktemp -d /tmp/fp-cost-run.XXXXXX)
TSV="$OUT/runs.tsv"; CMDS="$OUT/commands.tsv"
rm -f "$TSV" "$CMDS" "$OUT"/*.json "$OUT"/*.txt "$OUT"/*.err "$OUT"/*.log 2>/dev/null

# ---- binaries ----------------------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# fresh BINARY SOURCES...: true when BINARY exists and no source file is newer.
fresh() {
  local bin=$1; shift
  [ -x "$bin" ] || return 1
  [ -z "$(cd "$ROOT" && find "$@" -type f -newer "$bin" -print -quit 2>/dev/null)" ]
}
pick_bin() { # VAR_OVERRIDE NAME CARGO_ARGS SOURCES...
  local override=$1 name=$2 cargo_args=$3; shift 3
  if [ -n "$override" ]; then
    [ -x "$override" ] || die "$name: $override is not an executable (unset the override or fix the path)"
    echo "$override"; return
  fi
  local bin="$TARGET_DIR/release/$name"
  if ! fresh "$bin" "$@"; then
    log "building $name (cargo build --release $cargo_args): $bin is missing or older than its sources"
    # Cargo decides what is out of date (it leaves the binary alone when only, say, Cargo.lock's
    # time changed), so after it only the binary's presence is checked.
    (cd "$ROOT" && cargo build --release $cargo_args 2>&1 | tail -2) >&2
    [ -x "$bin" ] || die "cargo build --release $cargo_args did not produce $bin"
  fi
  echo "$bin"
}
FP=$(pick_bin "${FEATUREPROXY_BIN:-}" featureproxy "" src protocol/src Cargo.toml Cargo.lock) || exit 1
LG=$(pick_bin "${LOADGEN_BIN:-}" loadgen "-p loadgen" loadgen/src loadgen/Cargo.toml protocol/src client/src Cargo.lock) || exit 1
rel() { local p=${1//$ROOT\//}; echo "$p"; }

command -v redis-server >/dev/null || die "redis-server is not installed (apt-get install redis-server)"
find_nutcracker() { command -v nutcracker || { [ -x /usr/sbin/nutcracker ] && echo /usr/sbin/nutcracker; } || true; }
NUTCRACKER=$(find_nutcracker)
TWEM_NOTE=""
if [ -z "$NUTCRACKER" ] && [ $INSTALL = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "nutcracker (twemproxy) is missing: apt-get install -y nutcracker"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y nutcracker \
    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nutcracker; }; } >"$OUT/apt.log" 2>&1 \
    || log "apt-get install nutcracker failed (see $OUT/apt.log)"
  NUTCRACKER=$(find_nutcracker)
fi
if [ -z "$NUTCRACKER" ]; then
  TWEM_NOTE="twemproxy was skipped: nutcracker is not installed (as root: apt-get install -y nutcracker)."
  log "$TWEM_NOTE"
fi

PRIO=()
if [ $NICE = 1 ] && [ "$(nice -n -10 nice 2>/dev/null)" = "-10" ]; then PRIO=(nice -n -10); fi
PRIO_NOTE="at default priority"
[ ${#PRIO[@]} -gt 0 ] && PRIO_NOTE="all at nice -10 (the same for every process)"

# ---- processes ---------------------------------------------------------------------------------
REDIS_PID=""; PROXY_PID=""; PROXY1_PID=""; TWEM_PID=""; FLOOR_PID=""
cleanup() {
  for p in $FLOOR_PID $TWEM_PID $PROXY_PID $PROXY1_PID $REDIS_PID; do kill "$p" 2>/dev/null; done
  for p in $FLOOR_PID $TWEM_PID $PROXY_PID $PROXY1_PID $REDIS_PID; do wait "$p" 2>/dev/null; done
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

USED_PORTS=" "
free_port() {
  local p
  while :; do
    p=$(( (RANDOM % 20000) + 30000 ))
    case "$USED_PORTS" in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS="$USED_PORTS$p "
      echo "$p"; return
    fi
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

RP=$(free_port); PP=$(free_port); SP=$(free_port); PP1=$(free_port); SP1=$(free_port); TP=$(free_port); TSP=$(free_port); FLP=$(free_port)
SERVERS=()
${PRIO[@]+"${PRIO[@]}"} redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$RUN_DIR" \
  >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
wait_port "$RP" 20 || die "redis-server did not start on $RP (see $OUT/redis.log)"
SERVERS+=("redis-server --port $RP --bind 127.0.0.1 --save '' --appendonly no    # pid $REDIS_PID")

${PRIO[@]+"${PRIO[@]}"} "$FP" serve --config "$ROOT/examples/features.toml" --listen "127.0.0.1:$PP" \
  --stats-listen "127.0.0.1:$SP" --redis "redis://127.0.0.1:$RP" --shards 2 >"$OUT/proxy.log" 2>&1 &
PROXY_PID=$!
wait_port "$PP" 30 || die "featureproxy did not start on $PP (see $OUT/proxy.log)"
SERVERS+=("$(rel "$FP") serve --config examples/features.toml --listen 127.0.0.1:$PP --stats-listen 127.0.0.1:$SP --redis redis://127.0.0.1:$RP --shards 2    # pid $PROXY_PID")
# The same proxy with one shard (README: what to run where the proxy shares its cores with Redis
# and the callers, as here). It sits idle while the other targets run.
${PRIO[@]+"${PRIO[@]}"} "$FP" serve --config "$ROOT/examples/features.toml" --listen "127.0.0.1:$PP1" \
  --stats-listen "127.0.0.1:$SP1" --redis "redis://127.0.0.1:$RP" --shards 1 >"$OUT/proxy1.log" 2>&1 &
PROXY1_PID=$!
wait_port "$PP1" 30 || die "featureproxy --shards 1 did not start on $PP1 (see $OUT/proxy1.log)"
SERVERS+=("$(rel "$FP") serve --config examples/features.toml --listen 127.0.0.1:$PP1 --stats-listen 127.0.0.1:$SP1 --redis redis://127.0.0.1:$RP --shards 1    # pid $PROXY1_PID")

if [ -n "$NUTCRACKER" ]; then
  # The configuration of benches/scenarios.sh.
  cat >"$RUN_DIR/nutcracker.yml" <<EOF
featureproxy_bench:
  listen: 127.0.0.1:$TP
  hash: fnv1a_64
  distribution: ketama
  redis: true
  preconnect: true
  auto_eject_hosts: false
  server_retry_timeout: 200
  server_connections: 1
  timeout: 2000
  servers:
    - 127.0.0.1:$RP:1
EOF
  cp "$RUN_DIR/nutcracker.yml" "$OUT/nutcracker.yml"
  ${PRIO[@]+"${PRIO[@]}"} "$NUTCRACKER" -c "$RUN_DIR/nutcracker.yml" -s "$TSP" -o "$OUT/nutcracker.log" &
  TWEM_PID=$!
  wait_port "$TP" 20 || die "nutcracker did not start on $TP (see $OUT/nutcracker.log)"
  SERVERS+=("nutcracker -c nutcracker.yml -s $TSP    # pid $TWEM_PID; pool on 127.0.0.1:$TP, redis: true, server_connections: 1, servers: [127.0.0.1:$RP:1]")
fi

${PRIO[@]+"${PRIO[@]}"} "$LG" floor --listen "127.0.0.1:$FLP" --view user_features >"$OUT/floor.log" 2>&1 &
FLOOR_PID=$!
wait_port "$FLP" 20 || die "loadgen floor did not start on $FLP (see $OUT/floor.log)"
SERVERS+=("$(rel "$LG") floor --listen 127.0.0.1:$FLP --view user_features    # pid $FLOOR_PID")

TARGETS=(proxy proxy-bypass proxy1 proxy1-bypass redis)
[ -n "$TWEM_PID" ] && TARGETS+=(twem)
TARGETS+=(floor)
LOADS=(1e hot c50 b100)
# The hot load (1,000 entities, all of which fit the hot cache) runs only against these.
HOT_TARGETS=" proxy proxy1 redis floor "
# The closed loop of 50 callers measures throughput: against the proxies, Redis and twemproxy.
C50_TARGETS=" proxy proxy1 redis twem "
runs_load() { # LOAD TARGET
  case $1 in
    hot) [[ "$HOT_TARGETS" == *" $2 "* ]] ;;
    c50) [[ "$C50_TARGETS" == *" $2 "* ]] ;;
    *) true ;;
  esac
}
log "redis :$RP, proxy :$PP${TWEM_PID:+, twemproxy :$TP}, floor :$FLP; ${#TARGETS[@]} targets x ${#LOADS[@]} loads x $ROUNDS round(s) of ${WARM} + ${DUR}; files in $OUT"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

LAST_SEED=0
seed() {
  local cmd=("$LG" seed --target "127.0.0.1:$PP" --view user_features --entities "$ENTITIES")
  printf 'seed\t%s\n' "$(rel "${cmd[*]}")" >>"$CMDS"
  log "seeding $ENTITIES entities through the proxy"
  ${PRIO[@]+"${PRIO[@]}"} "${cmd[@]}" >>"$OUT/seed.log" 2>&1 || die "seed failed (see $OUT/seed.log)"
  LAST_SEED=$(date +%s)
  tail -1 "$OUT/seed.log" | sed 's/^/    /' >&2
}

FAILS=0
# run_one LOAD TARGET ROUND
run_one() {
  local load=$1 tgt=$2 r=$3 target pids=() args=()
  local label="cost/$load/$tgt/r$r" file="${load}_${tgt}_r$r"
  case $load in
    1e | hot) args=(--rate "$RATE" --connections 4) ;;
    c50) args=(--closed --connections 50 --inflight 1) ;;
    b100) args=(--closed --batch 100 --connections 16 --inflight 1) ;;
  esac
  case $tgt in
    proxy) target="127.0.0.1:$PP"; pids=("$PROXY_PID" "$REDIS_PID") ;;
    proxy-bypass) target="127.0.0.1:$PP"; pids=("$PROXY_PID" "$REDIS_PID"); args+=(--bypass-cache) ;;
    proxy1) target="127.0.0.1:$PP1"; pids=("$PROXY1_PID" "$REDIS_PID") ;;
    proxy1-bypass) target="127.0.0.1:$PP1"; pids=("$PROXY1_PID" "$REDIS_PID"); args+=(--bypass-cache) ;;
    redis) target="resp://127.0.0.1:$RP"; pids=("$REDIS_PID") ;;
    twem) target="resp://127.0.0.1:$TP"; pids=("$TWEM_PID" "$REDIS_PID") ;;
    floor) target="127.0.0.1:$FLP"; pids=("$FLOOR_PID") ;;
  esac
  # The rows of the floor are canned, so no target verifies: loadgen does the same work for all.
  local ents=$ENTITIES
  [ "$load" = hot ] && ents=$HOT_ENTITIES
  local cmd=("$LG" run --target "$target" --view user_features --entities "$ents" "${args[@]}"
    --duration "$DUR" --warmup "$WARM" --verify-every 0)
  local p
  for p in "${pids[@]}"; do cmd+=(--server-pid "$p"); done
  printf '%s\t%s\n' "$label" "$(rel "${cmd[*]}")" >>"$CMDS"
  ${PRIO[@]+"${PRIO[@]}"} "${cmd[@]}" --label "$label" --json "$OUT/$file.json" --tsv "$TSV" --no-timeline \
    >"$OUT/$file.txt" 2>"$OUT/$file.err"
  local rc=$?
  [ $rc = 0 ] || FAILS=$((FAILS + 1))
  # The requests, the servers' CPU (the total when there are several) and the errors.
  local line
  line=$(awk '/^requests|^errors/ { print; next } /^server cpu/ { cpu[++n] = $0 }
    END { print cpu[n] }' "$OUT/$file.txt" | tr -s ' ' | paste -sd'|' -)
  log "$label: rc=$rc ${line:0:230}"
}

# Round r: the targets rotated by r-1, reversed every other round, and the loads alternated, so no
# target always follows the same one or runs at the same point of a round.
order() { # round -> targets, one per line
  local r=$1 n=${#TARGETS[@]} i list=()
  for ((i = 0; i < n; i++)); do list+=("${TARGETS[$(( (i + r - 1) % n ))]}"); done
  if [ $((r % 2)) = 0 ]; then
    for ((i = n - 1; i >= 0; i--)); do echo "${list[$i]}"; done
  else
    printf '%s\n' "${list[@]}"
  fi
}

seed
for ((r = 1; r <= ROUNDS; r++)); do
  if [ $(( $(date +%s) - LAST_SEED )) -gt $SEED_MAX_AGE ]; then seed; fi
  mapfile -t ORDER < <(order "$r")
  loads=("${LOADS[@]}")
  [ $((r % 2)) = 0 ] && loads=("${LOADS[3]}" "${LOADS[2]}" "${LOADS[1]}" "${LOADS[0]}")
  log "round $r/$ROUNDS: ${ORDER[*]}"
  for load in "${loads[@]}"; do
    for tgt in "${ORDER[@]}"; do runs_load "$load" "$tgt" && run_one "$load" "$tgt" "$r"; done
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
[ -s "$TSV" ] || die "no run produced a result (see $OUT/*.err)"

# ---- report ------------------------------------------------------------------------------------
# One awk pass over the commands and the runs' TSV lines: per load and target the medians over the
# rounds, then the ratios, each computed within a round (the two runs closest in time) and the
# median of those taken.
tables() {
  awk -F'\t' -v rate="$RATE" '
    function med(list,   n, a, i, j, t) {
      n = split(list, a, " "); if (n == 0) return ""
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    function sig(v) { if (v == "") return "-"; v += 0; if (v >= 100) return sprintf("%.0f", v);
      if (v >= 10) return sprintf("%.1f", v); if (v >= 1) return sprintf("%.2f", v); return sprintf("%.3f", v) }
    function us(v) { if (v == "") return "-"; v += 0; if (v < 1000) return sprintf("%d µs", v); return sprintf("%.2f ms", v / 1000) }
    function add(k, v) { if (v != "" && v != "-") vals[k] = vals[k] " " v }
    FNR == NR { cmd[$1] = $2; next }
    FNR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    {
      split($1, p, "/"); load = p[2]; tgt = p[3]; r = substr(p[4], 2) + 0
      k = load SUBSEP tgt; runs[k]++; if (r > rounds) rounds = r
      add(k SUBSEP "req", $col["server_cpu_us_per_request"]); add(k SUBSEP "ent", $col["server_cpu_us_per_entity"])
      add(k SUBSEP "rps", $col["achieved_rps"]); add(k SUBSEP "p50", $col["p50_us"]); add(k SUBSEP "p99", $col["p99_us"])
      add(k SUBSEP "err", $col["errors"]); add(k SUBSEP "stored", $col["fresh"] + $col["stale"])
      tot[k, r] = $col["server_cpu_us_per_request"]; tput[k, r] = $col["achieved_rps"]
      n = split($col["server_cpu"], procs, ",")
      for (i = 1; i <= n; i++) {
        name = procs[i]; sub(/:.*/, "", name); v = procs[i]; sub(/^[^=]*=/, "", v); split(v, re, "/")
        pname[k, i] = name; nproc[k] = n; add(k SUBSEP "proc" i, re[1])
        if (i == 1) front[k, r] = re[1]
      }
    }
    # ratio LOAD WHAT A AKIND B BKIND: A over B, each "front" (the first process: the proxy or
    # twemproxy alone), "total" (every process charged to the target) or "rps" (throughput).
    function ratio(load, what, a, ak, b, bk,   r, list, x, y, shown) {
      list = ""; shown = ""
      for (r = 1; r <= rounds; r++) {
        x = (ak == "front" ? front[load, a, r] : ak == "rps" ? tput[load, a, r] : tot[load, a, r])
        y = (bk == "front" ? front[load, b, r] : bk == "rps" ? tput[load, b, r] : tot[load, b, r])
        if (x == "" || x == "-" || y == "" || y == "-" || y + 0 <= 0) continue
        list = list " " x / y; shown = shown (shown == "" ? "" : ", ") sprintf("%.2f", x / y)
      }
      if (list == "") return
      printf "| %s | %s | **%.2fx** | %s |\n", title[load], what, med(list), shown
    }
    END {
      title["1e"] = "1 entity, open loop " rate " req/s"; title["b100"] = "100 entities, closed loop 16 x 1"
      title["hot"] = "1 entity, 1,000 hot entities, open loop " rate " req/s"
      title["c50"] = "1 entity, closed loop 50 x 1"
      nl = split("1e hot c50 b100", loads, " "); nt = split("proxy proxy-bypass proxy1 proxy1-bypass redis twem floor", tgts, " ")
      tname["proxy"] = "featureproxy, 2 shards, hot cache on"; tname["proxy-bypass"] = "featureproxy, 2 shards, --bypass-cache"
      tname["proxy1"] = "featureproxy, 1 shard, hot cache on"; tname["proxy1-bypass"] = "featureproxy, 1 shard, --bypass-cache"
      tname["redis"] = "Redis directly"; tname["twem"] = "twemproxy"; tname["floor"] = "loadgen floor"
      for (l = 1; l <= nl; l++) {
        load = loads[l]
        print "### " (load == "1e" ? "1 entity per GET, open loop at " rate " req/s, 4 connections" : load == "hot" ? "1 entity per GET from a hot set that fits the cache (Zipf 0.99 over 1,000 entities), open loop at " rate " req/s, 4 connections" : load == "c50" ? "1 entity per GET, closed loop, 50 connections x 1 in flight (50 callers calling in turn)" : "100 entities per GET, closed loop, 16 connections x 1 in flight")
        print ""
        print "| target | server CPU µs/request | µs/entity | by process, µs/request | achieved req/s | p50 | p99 | errors | rows served | command (round 1) |"
        print "|---|---|---|---|---|---|---|---|---|---|"
        for (t = 1; t <= nt; t++) {
          k = load SUBSEP tgts[t]; if (!runs[k]) continue
          by = ""
          for (i = 1; i <= nproc[k]; i++) by = by (i > 1 ? " + " : "") pname[k, i] " " sig(med(vals[k SUBSEP "proc" i]))
          printf "| %s | **%s** | %s | %s | %.0f | %s | %s | %s | %.1f%% | `%s` |\n", tname[tgts[t]], sig(med(vals[k SUBSEP "req"])),
            sig(med(vals[k SUBSEP "ent"])), by, med(vals[k SUBSEP "rps"]), us(med(vals[k SUBSEP "p50"])), us(med(vals[k SUBSEP "p99"])),
            med(vals[k SUBSEP "err"]), 100 * med(vals[k SUBSEP "stored"]), cmd["cost/" load "/" tgts[t] "/r1"]
        }
        print ""
      }
      print "### Ratios of server CPU per request"
      print ""
      print "Each ratio divides two runs of the same round (so both met the machine in much the same state), and the median over the rounds is given with each round'"'"'s value. Every target answers the same entities per request, so the ratios per entity are the same."
      print ""
      print "| load | ratio | median | per round |"
      print "|---|---|---|---|"
      for (l = 1; l <= nl; l++) {
        load = loads[l]
        ratio(load, "proxy process / floor (1 shard, cache on)", "proxy1", "front", "floor", "total")
        ratio(load, "proxy process / floor (1 shard, --bypass-cache)", "proxy1-bypass", "front", "floor", "total")
        ratio(load, "proxy process / floor (2 shards, cache on)", "proxy", "front", "floor", "total")
        ratio(load, "proxy process / floor (2 shards, --bypass-cache)", "proxy-bypass", "front", "floor", "total")
        ratio(load, "proxy process / Redis direct (1 shard, cache on)", "proxy1", "front", "redis", "total")
        ratio(load, "proxy process / Redis direct (1 shard, --bypass-cache)", "proxy1-bypass", "front", "redis", "total")
        ratio(load, "proxy process / Redis direct (2 shards, cache on)", "proxy", "front", "redis", "total")
        ratio(load, "proxy process / Redis direct (2 shards, --bypass-cache)", "proxy-bypass", "front", "redis", "total")
        ratio(load, "(proxy + Redis) / Redis direct (1 shard, cache on)", "proxy1", "total", "redis", "total")
        ratio(load, "(proxy + Redis) / Redis direct (1 shard, --bypass-cache)", "proxy1-bypass", "total", "redis", "total")
        ratio(load, "(proxy + Redis) / Redis direct (2 shards, cache on)", "proxy", "total", "redis", "total")
        ratio(load, "(proxy + Redis) / Redis direct (2 shards, --bypass-cache)", "proxy-bypass", "total", "redis", "total")
        ratio(load, "(proxy + Redis) / (twemproxy + Redis) (1 shard, cache on)", "proxy1", "total", "twem", "total")
        ratio(load, "(proxy + Redis) / (twemproxy + Redis) (1 shard, --bypass-cache)", "proxy1-bypass", "total", "twem", "total")
        ratio(load, "(proxy + Redis) / (twemproxy + Redis) (2 shards, cache on)", "proxy", "total", "twem", "total")
        ratio(load, "(proxy + Redis) / (twemproxy + Redis) (2 shards, --bypass-cache)", "proxy-bypass", "total", "twem", "total")
        ratio(load, "(twemproxy + Redis) / Redis direct, for scale", "twem", "total", "redis", "total")
        if (load == "c50") {
          ratio(load, "throughput: proxy / Redis direct (1 shard, cache on)", "proxy1", "rps", "redis", "rps")
          ratio(load, "throughput: proxy / Redis direct (2 shards, cache on)", "proxy", "rps", "redis", "rps")
          ratio(load, "throughput: proxy / twemproxy (1 shard, cache on)", "proxy1", "rps", "twem", "rps")
          ratio(load, "throughput: proxy / twemproxy (2 shards, cache on)", "proxy", "rps", "twem", "rps")
        }
        if (load != "b100") continue
        ratio(load, "entities/s: proxy / Redis direct (1 shard, cache on)", "proxy1", "rps", "redis", "rps")
        ratio(load, "entities/s: proxy / Redis direct (2 shards, cache on)", "proxy", "rps", "redis", "rps")
      }
    }' "$CMDS" "$TSV"
}

tables >"$RUN_DIR/tables.md" || die "the report's tables could not be computed from $TSV"
SECTION="$RUN_DIR/section.md"
{
  echo "<!-- cost.sh begin -->"
  echo "## Server CPU per request: the proxy against the floor, Redis and twemproxy"
  echo
  [ $QUICK = 1 ] && { echo "**Quick smoke run (--quick): tiny and short, not a measurement.**"; echo; }
  echo "Generated by \`benches/cost.sh$([ $QUICK = 1 ] && echo ' --quick') --rounds $ROUNDS\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)'). This section is rewritten by each run of cost.sh; the rest of the file is not."
  echo
  echo "- What is measured: the CPU time (user + system, every thread) each server process used over each run's measured window (\`loadgen run --server-pid\`, from \`/proc/PID/stat\`, sampled when the window opens and when it closes, in $(getconf CLK_TCK 2>/dev/null || echo 100) ticks/s), divided by the requests and by the entities answered in that window. The proxy's figure is charged with Redis's (the work it asks of Redis), twemproxy's likewise; Redis direct and the floor stand alone."
  echo "- The floor is \`loadgen floor\`: one thread that decodes every frame with featureproxy-protocol's decoder (as the proxy does) and answers each GET with a canned reply of the right size (FRESH, rows of zeros), one write per read. What the proxy costs above it is the price of real rows: reading Redis, caching, assembling replies."
  echo "- $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), Linux $(uname -r); everything on this host, sharing the cores: redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), featureproxy (release, once with \`--shards 2\` and once with \`--shards 1\`), ${NUTCRACKER:+twemproxy ($($NUTCRACKER --version 2>&1 | head -1 | sed 's/^This is //')), }the floor and loadgen (1 sender + 1 receiver thread), $PRIO_NOTE. Load average $LOAD_START at the start, $LOAD_END at the end."
  echo "- $ENTITIES entities of \`user_features\` (16 x f32) seeded through the proxy, Zipf 0.99; \`rows served\` is the share answered with a stored row (fresh or stale). $ROUNDS round(s); each round runs every load against its targets, in a different order each round; each run is $WARM of warm-up then $DUR measured. Tables give the median over the rounds."
  echo "- The open-loop load is the like-for-like one: every target does the same work at the same rate. In the closed loop each target runs as fast as it can, and a server that answers faster finds more requests per wake-up, so its CPU per request is lower partly because of its speed."
  [ -n "$TWEM_NOTE" ] && echo "- $TWEM_NOTE"
  echo
  cat "$RUN_DIR/tables.md"
  echo "Servers (ports and pids of this run; \`--server-pid\` in the commands above refers to these):"
  echo
  echo '```'
  printf '%s\n' "${SERVERS[@]}"
  echo '```'
  echo
  echo "Per-run reports (text, JSON) and every command in order are in \`$(rel "$OUT")/\`."
  echo "<!-- cost.sh end -->"
} >"$SECTION"

# Replaces the section between the markers, or appends it when the file has none.
write_section() { # file
  local f=$1 tmp="$1.cost.tmp"
  [ -f "$f" ] || : >"$f"
  if grep -q '^<!-- cost.sh begin -->' "$f"; then
    awk -v sec="$SECTION" '
      /^<!-- cost.sh begin -->/ { while ((getline l < sec) > 0) print l; skip = 1; next }
      skip && /^<!-- cost.sh end -->/ { skip = 0; next }
      !skip { print }' "$f" >"$tmp"
  else
    { cat "$f"; [ -s "$f" ] && echo; cat "$SECTION"; } >"$tmp"
  fi
  mv "$tmp" "$f"
}
if [ $QUICK = 1 ]; then
  MD="$OUT/RESULTS-quick.md"
  cp "$ROOT/benches/RESULTS.md" "$MD" 2>/dev/null
else
  MD="$ROOT/benches/RESULTS.md"
fi
write_section "$MD"
log "wrote the cost.sh section of $MD"

# ---- checks ------------------------------------------------------------------------------------
PER_ROUND=0
for load in "${LOADS[@]}"; do for tgt in "${TARGETS[@]}"; do runs_load "$load" "$tgt" && PER_ROUND=$((PER_ROUND + 1)); done; done
EXPECTED=$(( PER_ROUND * ROUNDS ))
GOT=$(($(wc -l <"$TSV") - 1))
BAD=$(awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
  $col["errors"] != 0 || $col["server_cpu_us_per_request"] == "-" || $col["server_cpu_us_per_request"] + 0 <= 0 { print $1 }' "$TSV")
[ "$GOT" = "$EXPECTED" ] || { log "$GOT of $EXPECTED runs produced a result"; FAILS=$((FAILS + 1)); }
[ -z "$BAD" ] || { log "runs with errors or without a server CPU figure: $(echo $BAD)"; FAILS=$((FAILS + 1)); }
[ $FAILS = 0 ] || die "$FAILS problem(s) (see $OUT)"
log "all $EXPECTED runs answered without errors, every server's CPU measured"
