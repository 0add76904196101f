#!/usr/bin/env bash
# Feast's own feature server (`feast serve`) against featureproxy, on the same Redis data that
# Feast materialized: throughput and latency at 1 and 100 entities per request.
#
#   benches/feast.sh                full run (about 11 minutes): writes its section of
#                                   benches/RESULTS.md (between the feast.sh markers; the rest of
#                                   the file is left alone) and per-run files in
#                                   benches/results/feast/
#   benches/feast.sh --quick        smoke (about 1.5 minutes): 10,000 drivers, short runs, 1 round,
#                                   into a temporary directory, RESULTS.md untouched; checks that
#                                   every run answered, without errors, with the written values
#   --rounds N                      rounds (default 3; 1 with --quick); each runs both loads
#                                   against every target, in a different order each round
#   --entities N                    drivers materialized (default 100000; 10000 with --quick)
#   --out DIR                       where per-run files go
#   --no-nice                       don't run every process at nice -10 (done when allowed, the same
#                                   for all of them)
#
# What runs: a private redis-server; a throwaway Feast repo (project `bench`, provider local, Redis
# online store, entity_key_serialization_version 3, file registry, FileSource) with one entity
# driver_id (Int64) and one feature view driver_hourly_stats (16 x Float32, ttl 1 day), `feast
# apply`, then N drivers (ids 0..N-1, event time now) written with
# FeatureStore.write_to_online_store in DataFrames of 10,000 (benches/feast_bench.py setup).
# Targets, all reading that Redis:
#   feast        `feast serve` with its defaults (1 gunicorn/uvicorn worker, access log on, a worker
#                recycled every ~1000 requests), loaded by wrk (2 threads, 16 connections)
#   feast-tuned  `feast serve --workers 2 --no-access-log --max-requests 0` (a worker per core, no
#                log, no recycling: the fastest setting found for this 2-core host), wrk likewise
#   fp           featureproxy (release, --shards 1, a `layout = "feast"` view, hot cache 1 s),
#                loaded by `loadgen run --closed` (16 connections x 1 in flight)
#   fp-bypass    the same with --bypass-cache: every entity read from Redis (HMGET), as Feast does
#   fp-py        the same proxy through the Python client (featureproxy.Client.get, 16 threads,
#                one pooled client of 16 connections, each thread 1 request at a time)
# Every target gets the same requests: ids replayed from one trace (uniform over 0..N-1, seeded),
# 16 callers with 1 request in flight each, 1 entity and 100 entities per request. Server CPU per
# request: loadgen --server-pid (proxy, Redis) for fp and fp-bypass, /proc sampling of the process
# trees (gunicorn master + workers, Redis; proxy, Redis) around the measured window for the others.
# Correctness: before the runs, a sample of `feast serve` answers is compared with the written
# values (PRESENT, equal); every warm-up request of fp-py is checked likewise (FRESH, equal).
#
# Binaries: FEATUREPROXY_BIN and LOADGEN_BIN, else $CARGO_TARGET_DIR/release (default
# target/release) when present. Python: FEAST_PYTHON (default /tmp/venv-bench/bin/python), a venv
# with `pip install 'feast[redis]==0.67.0' numpy` and `pip install ./python`. Needs redis-server
# and wrk (apt-get install -y wrk).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0; ROUNDS=""; OUT=""; NICE=1; ENTITIES=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS="${2:?--rounds needs a number}"; shift ;;
    --entities) ENTITIES="${2:?--entities needs a number}"; shift ;;
    --out) OUT="${2:?--out needs a directory}"; shift ;;
    --no-nice) NICE=0 ;;
    -h|--help) sed -n '2,45p' "$0"; exit 0 ;;
    *) echo "feast.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "${ROUNDS:-x}" in x) ;; *[!0-9]*|0) echo "feast.sh: --rounds wants a positive integer, got $ROUNDS" >&2; exit 2 ;; esac

T_START=$(date +%s)
log() { printf '[feast %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# ---- sizes -------------------------------------------------------------------------------------
CONNS=16
if [ $QUICK = 1 ]; then
  ENTITIES=${ENTITIES:-10000}; DUR=2; WARM=1; ROUNDS=${ROUNDS:-1}
else
  ENTITIES=${ENTITIES:-100000}; DUR=15; WARM=3; ROUNDS=${ROUNDS:-3}
fi

if [ -z "$OUT" ]; then
  if [ $QUICK = 1 ]; then OUT=$(mktemp -d /tmp/fp-feast.XXXXXX); else OUT="$ROOT/benches/results/feast"; fi
fi
mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
RUN_DIR=$(mktemp -d /tmp/fp-feast-run.XXXXXX)
RUNS="$OUT/runs.jsonl"
rm -f "$RUNS" "$OUT"/*.json "$OUT"/*.txt "$OUT"/*.err "$OUT"/*.log 2>/dev/null

# ---- tools -------------------------------------------------------------------------------------
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
FP=${FEATUREPROXY_BIN:-$TARGET_DIR/release/featureproxy}
LG=${LOADGEN_BIN:-$TARGET_DIR/release/loadgen}
[ -x "$FP" ] || die "no featureproxy binary at $FP (cargo build --release --bin featureproxy, or set FEATUREPROXY_BIN)"
[ -x "$LG" ] || die "no loadgen binary at $LG (cargo build --release -p loadgen, or set LOADGEN_BIN)"
PY=${FEAST_PYTHON:-/tmp/venv-bench/bin/python}
[ -x "$PY" ] || die "no Python at $PY (set FEAST_PYTHON to a venv with feast[redis]==0.67.0, numpy and ./python)"
FEAST_CLI="$(dirname "$PY")/feast"
[ -x "$FEAST_CLI" ] || die "no feast CLI beside $PY"
"$PY" -c 'import feast, featureproxy, numpy' 2>/dev/null || die "$PY lacks feast, featureproxy or numpy"
FEAST_VERSION=$("$PY" -c 'import feast; print(feast.__version__)')
command -v redis-server >/dev/null || die "redis-server is not installed (apt-get install redis-server)"
command -v wrk >/dev/null || die "wrk is not installed (apt-get install -y wrk)"
BENCH="$ROOT/benches/feast_bench.py"
rel() { local p=${1//$ROOT\//}; echo "$p"; }

PRIO=()
if [ $NICE = 1 ] && [ "$(nice -n -10 nice 2>/dev/null)" = "-10" ]; then PRIO=(nice -n -10); fi
PRIO_NOTE="at default priority"
[ ${#PRIO[@]} -gt 0 ] && PRIO_NOTE="all at nice -10 (the same for every process)"

# ---- processes ---------------------------------------------------------------------------------
REDIS_PID=""; PROXY_PID=""; FEAST_PID=""; FEAST_T_PID=""
stop() { # PID...: TERM, then wait up to 10 s (gunicorn stops its workers first), then KILL
  local p i
  for p in "$@"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  for p in "$@"; do
    [ -n "$p" ] || continue
    for ((i = 0; i < 100; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
}
cleanup() {
  stop "$FEAST_PID" "$FEAST_T_PID" "$PROXY_PID"
  stop "$REDIS_PID"
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port the kernel has just handed out (so not in use, not even as the local end of a connection).
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port seconds pid
  local i
  for ((i = 0; i < $2 * 20; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

SERVERS=()
RP=$(free_port)
(cd "$RUN_DIR" && exec ${PRIO[@]+"${PRIO[@]}"} redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$RUN_DIR") \
  >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
wait_port "$RP" 20 "$REDIS_PID" || die "redis-server did not start on $RP (see $OUT/redis.log)"
SERVERS+=("redis-server --port $RP --bind 127.0.0.1 --save '' --appendonly no    # pid $REDIS_PID")

# ---- Feast repo and materialization ------------------------------------------------------------
REPO="$RUN_DIR/feature_repo"
log "Feast $FEAST_VERSION repo in $REPO: feast apply, then $ENTITIES drivers through write_to_online_store"
SETUP_CMD="$(rel "$PY") benches/feast_bench.py setup --repo REPO --redis-port $RP --entities $ENTITIES --hot-cache-ttl 1s"
${PRIO[@]+"${PRIO[@]}"} "$PY" "$BENCH" setup --repo "$REPO" --redis-port "$RP" --entities "$ENTITIES" --hot-cache-ttl 1s \
  >"$OUT/setup.json" 2>"$OUT/setup.err" || die "Feast setup failed (see $OUT/setup.err)"
cat "$OUT/setup.json" >&2
cp "$REPO/feature_store.yaml" "$REPO/features.py" "$REPO/featureproxy.toml" "$OUT/"
"$FP" check --config "$REPO/featureproxy.toml" >"$OUT/fp-check.txt" 2>&1 || die "featureproxy check refused the view (see $OUT/fp-check.txt)"
TRACE="$RUN_DIR/trace.txt"
"$PY" "$BENCH" trace --out "$TRACE" --entities "$ENTITIES" --count 1000000 --seed 1 || die "trace"
cat >"$OUT/feast.lua" <<'EOF'
-- wrk script of benches/feast.sh: POST /get-online-features of driver_hourly_stats' 16 features,
-- `batch` ids per request replayed from a trace (one id a line), each connection from its own place.
-- Arguments (after --): TRACE BATCH. done() prints one WRKJSON line.
local counter = 0
function setup(thread) thread:set("tid", counter); counter = counter + 1 end
local ids, n, pos, batch, prefix, suffix
function init(args)
  batch = tonumber(args[2])
  ids, n = {}, 0
  for line in io.lines(args[1]) do n = n + 1; ids[n] = line end
  pos = (tid * 7919 * batch) % n
  local feats = {}
  for j = 0, 15 do feats[#feats + 1] = '"driver_hourly_stats:f' .. j .. '"' end
  prefix = '{"features":[' .. table.concat(feats, ",") .. '],"entities":{"driver_id":['
  suffix = ']}}'
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  local t = {}
  for i = 1, batch do t[i] = ids[((pos + i - 1) % n) + 1] end
  pos = (pos + batch) % n
  return wrk.format(nil, "/get-online-features", nil, prefix .. table.concat(t, ",") .. suffix)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
EOF

# ---- servers -----------------------------------------------------------------------------------
PP=$(free_port); SP=$(free_port)
${PRIO[@]+"${PRIO[@]}"} "$FP" serve --config "$REPO/featureproxy.toml" --listen "127.0.0.1:$PP" \
  --stats-listen "127.0.0.1:$SP" --redis "redis://127.0.0.1:$RP" --shards 1 >"$OUT/proxy.log" 2>&1 &
PROXY_PID=$!
wait_port "$PP" 30 "$PROXY_PID" || die "featureproxy did not start on $PP (see $OUT/proxy.log)"
SERVERS+=("$(rel "$FP") serve --config featureproxy.toml --listen 127.0.0.1:$PP --stats-listen 127.0.0.1:$SP --redis redis://127.0.0.1:$RP --shards 1    # pid $PROXY_PID")

start_feast() { # VAR LOGNAME ARGS...: starts feast serve in the repo on a free port; sets VAR, VAR_PORT
  local var=$1 logf=$2 port pid; shift 2
  port=$(free_port)
  (cd "$REPO" && exec ${PRIO[@]+"${PRIO[@]}"} "$FEAST_CLI" serve -p "$port" "$@") >"$OUT/$logf" 2>&1 &
  pid=$!
  printf -v "$var" '%s' "$pid"; printf -v "${var}_PORT" '%s' "$port"
  SERVERS+=("cd feature_repo && feast serve -p $port $*    # pid $pid (gunicorn master; its workers are charged with it)")
}
# Both start at once (each takes seconds to import Feast and boot its workers).
start_feast FEAST_PID feast.log
start_feast FEAST_T_PID feast-tuned.log --workers 2 --no-access-log --max-requests 0
wait_port "$FEAST_PID_PORT" 120 "$FEAST_PID" || die "feast serve did not start on $FEAST_PID_PORT (see $OUT/feast.log)"
wait_port "$FEAST_T_PID_PORT" 120 "$FEAST_T_PID" || die "feast serve (tuned) did not start on $FEAST_T_PID_PORT (see $OUT/feast-tuned.log)"
sleep 2  # every worker booted
for port in "$FEAST_PID_PORT" "$FEAST_T_PID_PORT"; do
  "$PY" "$BENCH" check-feast --port "$port" --entities "$ENTITIES" >>"$OUT/check-feast.txt" 2>&1 \
    || die "feast serve on $port did not answer the written values (see $OUT/check-feast.txt)"
done
log "redis :$RP (pid $REDIS_PID), featureproxy :$PP (pid $PROXY_PID), feast serve :$FEAST_PID_PORT (pid $FEAST_PID), tuned :$FEAST_T_PID_PORT (pid $FEAST_T_PID); answers of both checked"

TARGETS=(feast feast-tuned fp fp-bypass fp-py)
LOADS=(1 100)
log "${#TARGETS[@]} targets x ${#LOADS[@]} loads x $ROUNDS round(s) of ${WARM}s + ${DUR}s; files in $OUT"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

FAILS=0
# run_one BATCH TARGET ROUND: one JSON line appended to $RUNS
run_one() {
  local b=$1 tgt=$2 r=$3 label="b$1/$2/r$3" file="b$1_$2_r$3" cmd=() rc=0 summary
  case $tgt in
    feast|feast-tuned)
      local pid port
      if [ "$tgt" = feast ]; then pid=$FEAST_PID; port=$FEAST_PID_PORT; else pid=$FEAST_T_PID; port=$FEAST_T_PID_PORT; fi
      local wrkargs=(-t2 "-c$CONNS" --timeout 10s -s "$OUT/feast.lua" "http://127.0.0.1:$port" -- "$TRACE" "$b")
      ${PRIO[@]+"${PRIO[@]}"} wrk "-d${WARM}s" "${wrkargs[@]}" >"$OUT/$file.warm.txt" 2>&1
      local c0 c1
      c0=$("$PY" "$BENCH" cpu --pids "$pid,$REDIS_PID")
      ${PRIO[@]+"${PRIO[@]}"} wrk "-d${DUR}s" "${wrkargs[@]}" >"$OUT/$file.txt" 2>"$OUT/$file.err" || rc=$?
      c1=$("$PY" "$BENCH" cpu --pids "$pid,$REDIS_PID")
      cmd=(wrk "-d${DUR}s" "${wrkargs[@]}")
      summary=$("$PY" "$BENCH" wrk-summary "$OUT/$file.txt" --batch "$b" --connections "$CONNS" --cpu-before "$c0" --cpu-after "$c1") || rc=1
      ;;
    fp|fp-bypass)
      cmd=("$LG" run --target "127.0.0.1:$PP" --view driver_hourly_stats --entities "$ENTITIES" --key-prefix ""
        --trace "$TRACE" --verify-every 0 --closed --connections "$CONNS" --inflight 1 --batch "$b"
        --duration "${DUR}s" --warmup "${WARM}s")
      [ "$tgt" = fp-bypass ] && cmd+=(--bypass-cache)
      cmd+=(--server-pid "$PROXY_PID" --server-pid "$REDIS_PID")
      ${PRIO[@]+"${PRIO[@]}"} "${cmd[@]}" --label "$label" --json "$OUT/$file.json" --no-timeline \
        >"$OUT/$file.txt" 2>"$OUT/$file.err" || rc=$?
      summary=$("$PY" "$BENCH" loadgen-summary "$OUT/$file.json" --pids "$PROXY_PID,$REDIS_PID") || rc=1
      ;;
    fp-py)
      cmd=("$PY" "$BENCH" load --target fp --port "$PP" --threads "$CONNS" --batch "$b" --trace "$TRACE"
        --warmup "$WARM" --duration "$DUR" --pids "$PROXY_PID,$REDIS_PID")
      ${PRIO[@]+"${PRIO[@]}"} "${cmd[@]}" >"$OUT/$file.json" 2>"$OUT/$file.err" || rc=$?
      summary=$(tail -1 "$OUT/$file.json")
      ;;
  esac
  [ -n "$summary" ] || summary='{}'
  local shown
  shown=$(rel "${cmd[*]}"); shown=${shown//$TRACE/trace.txt}; shown=${shown//$OUT\//}; shown=${shown//--key-prefix  /--key-prefix \"\" }
  "$PY" -c 'import json,sys; d=json.loads(sys.argv[1] or "{}"); d.update(label=sys.argv[2], target=sys.argv[3], batch=int(sys.argv[4]), round=int(sys.argv[5]), rc=int(sys.argv[6]), cmd=sys.argv[7]); print(json.dumps(d))' \
    "$summary" "$label" "$tgt" "$b" "$r" "$rc" "$shown" >>"$RUNS"
  [ $rc = 0 ] || { FAILS=$((FAILS + 1)); log "$label: exit $rc (see $OUT/$file.err)"; }
  log "$label: $("$PY" -c 'import json,sys; d=json.loads(sys.argv[1] or "{}"); print("%s req/s, %s entities/s, p50 %s us, p99 %s us, errors %s, not ok %s, cpu us/req %s" % tuple(d.get(k) for k in ("rps","entities_per_s","p50_us","p99_us","errors","not_ok","cpu_us_per_request")))' "$summary" 2>/dev/null)"
}

order() { # round -> targets, one per line: rotated by r-1, reversed every other round
  local r=$1 n=${#TARGETS[@]} i list=()
  for ((i = 0; i < n; i++)); do list+=("${TARGETS[$(( (i + r - 1) % n ))]}"); done
  if [ $((r % 2)) = 0 ]; then
    for ((i = n - 1; i >= 0; i--)); do echo "${list[$i]}"; done
  else
    printf '%s\n' "${list[@]}"
  fi
}

T_RUNS=$(date +%s)
for ((r = 1; r <= ROUNDS; r++)); do
  mapfile -t ORDER < <(order "$r")
  loads=("${LOADS[@]}")
  [ $((r % 2)) = 0 ] && loads=("${LOADS[1]}" "${LOADS[0]}")
  log "round $r/$ROUNDS: ${ORDER[*]}"
  for b in "${loads[@]}"; do
    for tgt in "${ORDER[@]}"; do run_one "$b" "$tgt" "$r"; done
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
T_END=$(date +%s)

# ---- report ------------------------------------------------------------------------------------
{
  echo "quick=$QUICK"; echo "rounds=$ROUNDS"; echo "entities=$ENTITIES"; echo "dur=$DUR"; echo "warm=$WARM"; echo "conns=$CONNS"
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)"
  echo "cores=$(nproc)"; echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"; echo "kernel=$(uname -r)"
  echo "redis=$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')"; echo "feast=$FEAST_VERSION"
  echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}')"; echo "python=$("$PY" -c 'import platform; print(platform.python_version())')"
  echo "prio=$PRIO_NOTE"; echo "load_start=$LOAD_START"; echo "load_end=$LOAD_END"
  echo "setup=$(cat "$OUT/setup.json")"; echo "setup_cmd=$SETUP_CMD"
  echo "secs_total=$((T_END - T_START))"; echo "secs_runs=$((T_END - T_RUNS))"; echo "out=$(rel "$OUT")"
  for s in "${SERVERS[@]}"; do echo "server=$(rel "$s")"; done
} >"$OUT/meta.txt"
if [ $QUICK = 1 ]; then
  MD="$OUT/RESULTS-quick.md"
  cp "$ROOT/benches/RESULTS.md" "$MD" 2>/dev/null || : >"$MD"
else
  MD="$ROOT/benches/RESULTS.md"
fi
"$PY" "$BENCH" report --runs "$RUNS" --meta "$OUT/meta.txt" --results "$MD" >"$OUT/section.md" \
  || die "the report could not be computed from $RUNS"
log "wrote the feast.sh section of $MD"
sed -n '/^| target/,/^$/p' "$OUT/section.md" >&2

# ---- checks ------------------------------------------------------------------------------------
"$PY" "$BENCH" check-runs --runs "$RUNS" --expect $(( ${#TARGETS[@]} * ${#LOADS[@]} * ROUNDS )) || FAILS=$((FAILS + 1))
[ $FAILS = 0 ] || die "$FAILS problem(s) (see $OUT)"
log "all runs answered without errors with the written values; $((T_END - T_START)) s in all"
