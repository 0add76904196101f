#!/usr/bin/env bash
# Benchmark scenarios for featureproxy, side by side with Redis directly and twemproxy.
#
#   benches/scenarios.sh            full run (about 20 minutes): writes benches/results/ (per-run
#                                   text, JSON, SVG plots, logs, the report as report.md) and puts
#                                   the report into benches/RESULTS.md between the lines
#                                   <!-- benches/scenarios.sh report: begin --> and
#                                   <!-- benches/scenarios.sh report: end -->, leaving the rest
#                                   of that file as it is (it stops, before running anything, if
#                                   the two lines are not there)
#   benches/scenarios.sh --quick    CI smoke (about 2 minutes): every scenario once, small and short,
#                                   into a temporary directory; asserts that everything ran and
#                                   that the Redis-kill run answered every request, never timings
#   --out DIR                       where per-run files go (default benches/results, or a temporary
#                                   directory with --quick)
#   --no-nice                       don't raise the priority of the benchmark's processes (by
#                                   default, when allowed, redis-server, the proxy, nutcracker and
#                                   loadgen all run at nice -10, the same for all of them, so that
#                                   unrelated work on shared cores disturbs the numbers less)
#
# It starts its own redis-server, proxy and (when installed) nutcracker on free ports of
# 127.0.0.1, and stops them on exit. Needs redis-server on PATH; twemproxy is optional
# (apt-get install nutcracker).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
OUT=""
NICE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT="$2"; shift ;;
    --no-nice) NICE=0 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[scenarios %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# A full run's report is one part of benches/RESULTS.md, the lines between these two markers; the
# rest of the file (the current figures at the top, the sections of other scripts and of each
# issue below) is not this script's to rewrite. The markers are checked before anything runs, so
# that a file without them fails now and not after twenty minutes of measuring, and nothing of
# the last run's results is deleted on the way.
MD="$ROOT/benches/RESULTS.md"
REPORT_BEGIN='<!-- benches/scenarios.sh report: begin -->'
REPORT_END='<!-- benches/scenarios.sh report: end -->'
# report_markers_ok FILE: each marker is a line of its own, there once, the begin before the end.
report_markers_ok() {
  awk -v b="$REPORT_BEGIN" -v e="$REPORT_END" '
    $0 == b { nb++; if (ne) bad = 1 }
    $0 == e { ne++; if (!nb) bad = 1 }
    END { exit !(nb == 1 && ne == 1 && !bad) }' "$1" 2>/dev/null
}
# splice_report REPORT FILE: FILE with the lines between its markers replaced by REPORT's (the
# markers stay). Written beside FILE and renamed over it, so that FILE is always either the old
# or the new one, never half written; on any failure FILE is left as it was.
splice_report() {
  local tmp="$2.scenarios.$$"
  [ -s "$1" ] && report_markers_ok "$2" || return 1
  awk -v b="$REPORT_BEGIN" -v e="$REPORT_END" -v report="$1" '
    $0 == e { skip = 0 }
    !skip { print }
    $0 == b { while ((getline line < report) > 0) print line; close(report); skip = 1 }' "$2" >"$tmp" \
    && mv "$tmp" "$2" || { rm -f "$tmp"; return 1; }
}
MARKERS_MISSING="$MD must hold the lines '$REPORT_BEGIN' and '$REPORT_END', once each and in that order, around the place of this script's report; not writing it"
if [ $QUICK = 0 ] && ! report_markers_ok "$MD"; then
  die "$MARKERS_MISSING"
fi

if [ -z "$OUT" ]; then
  if [ $QUICK = 1 ]; then OUT=$(mktemp -d /tmp/fp-scenarios.XXXXXX); else OUT="$ROOT/benches/results"; fi
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RUN_DIR=$(mktemp -d /tmp/fp-scenarios-run.XXXXXX)
TSV="$OUT/runs.tsv"
CMDS="$OUT/commands.txt"
rm -f "$TSV" "$CMDS" "$OUT"/*.json "$OUT"/*.svg "$OUT"/*.txt "$OUT"/*.err "$OUT"/*.log 2>/dev/null

command -v redis-server >/dev/null || die "redis-server is not installed (apt-get install redis-server)"
NUTCRACKER=$(command -v nutcracker || { [ -x /usr/sbin/nutcracker ] && echo /usr/sbin/nutcracker; } || true)

PRIO=()
if [ $NICE = 1 ] && [ "$(nice -n -10 nice 2>/dev/null)" = "-10" ]; then PRIO=(nice -n -10); fi
PRIO_NOTE="at default priority"
[ ${#PRIO[@]} -gt 0 ] && PRIO_NOTE="all at nice -10 (the same priority for every one of them, above unrelated work)"

# ---- sizes -------------------------------------------------------------------------------------
if [ $QUICK = 1 ]; then
  ENTITIES=20000; REPEATS=1; DUR=2s; WARM=1s; MAXDUR=2s; BURST_DUR=4s; BURST=4x:1s/2s
  KILL_AT=2; KILL_FOR=2; KILL_DUR=6s; SEED_MAX_AGE=100000; SWEEP_FRACTIONS="5 20"; SWEEP_DUR=1s
else
  ENTITIES=1000000; REPEATS=3; DUR=20s; WARM=3s; MAXDUR=10s; BURST_DUR=30s; BURST=4x:2s/10s
  KILL_AT=8; KILL_FOR=5; KILL_DUR=20s; SEED_MAX_AGE=90; SWEEP_FRACTIONS="1 2 5 10 20 35 50"; SWEEP_DUR=8s
fi

# ---- processes ---------------------------------------------------------------------------------
PIDS=()
REDIS_PID=""; PROXY_PID=""; TWEM_PID=""
cleanup() {
  for p in "${PIDS[@]}" $REDIS_PID $PROXY_PID $TWEM_PID; do
    kill "$p" 2>/dev/null
  done
  for p in "${PIDS[@]}" $REDIS_PID $PROXY_PID $TWEM_PID; do
    wait "$p" 2>/dev/null
  done
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
wait_port() { # port, seconds
  local i
  for ((i = 0; i < ${2:-20} * 20; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}
http_get() { # port path
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' "$2" >&3
  cat <&3
  exec 3<&-
}

RP=$(free_port); PP=$(free_port); SP=$(free_port); TP=$(free_port); TSP=$(free_port)
start_redis() {
  ${PRIO[@]+"${PRIO[@]}"} redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$RUN_DIR" \
    >>"$OUT/redis.log" 2>&1 &
  REDIS_PID=$!
  wait_port "$RP" 20 || die "redis-server did not start on $RP"
}
start_proxy() {
  ${PRIO[@]+"${PRIO[@]}"} "$ROOT/target/release/featureproxy" serve --config "$ROOT/examples/features.toml" \
    --listen "127.0.0.1:$PP" --stats-listen "127.0.0.1:$SP" --redis "redis://127.0.0.1:$RP" \
    --shards 2 >>"$OUT/proxy.log" 2>&1 &
  PROXY_PID=$!
  wait_port "$PP" 30 || die "the proxy did not start on $PP (see $OUT/proxy.log)"
}
stop_proxy() {
  kill "$PROXY_PID" 2>/dev/null; wait "$PROXY_PID" 2>/dev/null; PROXY_PID=""
}
start_twem() {
  [ -n "$NUTCRACKER" ] || return 0
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
  ${PRIO[@]+"${PRIO[@]}"} "$NUTCRACKER" -c "$RUN_DIR/nutcracker.yml" -s "$TSP" -o "$OUT/nutcracker.log" &
  TWEM_PID=$!
  wait_port "$TP" 20 || die "nutcracker did not start on $TP (see $OUT/nutcracker.log)"
}

# ---- build -------------------------------------------------------------------------------------
log "building (cargo build --release -p featureproxy -p loadgen)"
(cd "$ROOT" && cargo build --release -p featureproxy -p loadgen 2>&1 | tail -2) >&2
LG="$ROOT/target/release/loadgen"
[ -x "$LG" ] && [ -x "$ROOT/target/release/featureproxy" ] || die "build failed"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY_START=$(ps -eo pcpu,comm --sort=-pcpu | awk 'NR > 1 && $2 != "ps" && n < 3 { printf "%s (%s%%) ", $2, $1; n++ }')
start_redis
start_proxy
start_twem
TARGETS="proxy direct"
[ -n "$TWEM_PID" ] && TARGETS="$TARGETS twem"
log "redis :$RP, proxy :$PP (stats :$SP)${TWEM_PID:+, twemproxy :$TP}; results in $OUT"

target_of() {
  case "$1" in
    proxy) echo "127.0.0.1:$PP" ;;
    direct) echo "resp://127.0.0.1:$RP" ;;
    twem) echo "resp://127.0.0.1:$TP" ;;
  esac
}

FAILS=0
# lg NAME KIND ARGS... : one loadgen run; its exit code is returned (3 = SLO failed).
lg() {
  local name=$1 kind=$2; shift 2
  local file=${name//\//_}
  local cmd=("$LG" run --target "$(target_of "$kind")" --view user_features --label "$name"
    --json "$OUT/$file.json" --plot "$OUT/$file.svg" --tsv "$TSV" "$@")
  echo "${cmd[*]#$ROOT/}" >>"$CMDS"
  ${PRIO[@]+"${PRIO[@]}"} "${cmd[@]}" >"$OUT/$file.txt" 2>"$OUT/$file.err"
  local rc=$?
  local line
  line=$(grep -E '^(latency|requests|errors)' "$OUT/$file.txt" | tr -s ' ' | paste -sd'|' -)
  log "$name: rc=$rc ${line:0:230}"
  return $rc
}

LAST_SEED=0
seed() { # force?
  local now; now=$(date +%s)
  if [ "${1:-}" != force ] && [ $((now - LAST_SEED)) -lt $SEED_MAX_AGE ]; then return 0; fi
  local cmd=("$LG" seed --target "127.0.0.1:$PP" --view user_features --entities "$ENTITIES")
  echo "${cmd[*]#$ROOT/}" >>"$CMDS"
  log "seeding $ENTITIES entities"
  ${PRIO[@]+"${PRIO[@]}"} "${cmd[@]}" >>"$OUT/seed.log" 2>&1 || die "seed failed (see $OUT/seed.log)"
  LAST_SEED=$(date +%s)
  tail -2 "$OUT/seed.log" | sed 's/^/    /' >&2
}

# tsv_get LABEL COLUMN: a column of a run's TSV line.
tsv_get() {
  awk -F'\t' -v l="$1" -v c="$2" 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    $1 == l { v = $col[c] } END { print v }' "$TSV"
}

# ---- 0. loadgen itself -------------------------------------------------------------------------
log "loadgen selftest"
echo "target/release/loadgen selftest --duration 3s" >>"$CMDS"
${PRIO[@]+"${PRIO[@]}"} "$LG" selftest --duration 3s --json "$OUT/selftest.json" >"$OUT/selftest.txt" 2>"$OUT/selftest.err" \
  || die "selftest failed"
sed 's/^/    /' "$OUT/selftest.txt" >&2

# ---- 1. seed, find the maximum -----------------------------------------------------------------
seed force
for kind in $TARGETS; do
  lg "max-closed-1e/$kind" "$kind" --entities "$ENTITIES" --closed --duration "$MAXDUR" --warmup 2s \
    --connections 4 --inflight 64 || FAILS=$((FAILS + 1))
  lg "max-closed-100e/$kind" "$kind" --entities "$ENTITIES" --closed --duration "$MAXDUR" --warmup 2s \
    --connections 4 --inflight 16 --batch 100 || FAILS=$((FAILS + 1))
done
MAX1=$(tsv_get max-closed-1e/proxy achieved_rps)
MAX100=$(tsv_get max-closed-100e/proxy achieved_rps)
[ -n "$MAX1" ] && [ "$MAX1" -gt 0 ] || die "no maximum measured"
round() { local v=$(( $1 / 2 )); if [ $v -ge 10000 ]; then echo $(( v / 1000 * 1000 )); elif [ $v -ge 100 ]; then echo $(( v / 100 * 100 )); else echo $(( v > 10 ? v : 10 )); fi; }
RATE=$(round "$MAX1")
RATE100=$(round "$MAX100")
log "proxy max: $MAX1 req/s (batch 1), $MAX100 req/s (batch 100); open-loop rates: $RATE and $RATE100 (half)"

# ---- 2. rate sweep: up to which rate does p99 stay within 1 ms? --------------------------------
round2() { local v=$1; if [ $v -ge 10000 ]; then echo $(( v / 1000 * 1000 )); elif [ $v -ge 1000 ]; then echo $(( v / 100 * 100 )); else echo $(( v > 10 ? v : 10 )); fi; }
SLO_RATE=""
for f in $SWEEP_FRACTIONS; do
  r=$(round2 $(( MAX1 * f / 100 )))
  for kind in $TARGETS; do
    [ "$kind" = proxy ] && seed
    lg "sweep/$kind/$(printf '%07d' "$r")" "$kind" --entities "$ENTITIES" --rate "$r" \
      --duration "$SWEEP_DUR" --warmup 2s --slo p99=1ms
    rc=$?
    case $rc in 0|3) ;; *) FAILS=$((FAILS + 1)) ;; esac
    if [ "$kind" = proxy ] && [ $rc = 0 ]; then SLO_RATE=$r; fi
  done
done
SLO_NOTE="the highest rate of the sweep below at which the proxy's p99 stayed within 1 ms (one run per rate; the repeats here check it)"
if [ -z "$SLO_RATE" ]; then
  SLO_RATE=$(round2 $(( MAX1 * ${SWEEP_FRACTIONS%% *} / 100 )))
  SLO_NOTE="the lowest rate of the sweep below, because at no swept rate did the proxy's p99 stay within 1 ms"
  log "no swept rate kept the proxy's p99 within 1 ms; steady-1e-slo runs at the lowest, $SLO_RATE req/s"
else
  log "highest swept rate with the proxy's p99 within 1 ms: $SLO_RATE req/s"
fi

# ---- 3. steady 1-entity (at half the maximum, and at the SLO rate) and batch of 100, repeated --
for r in $(seq 1 $REPEATS); do
  for kind in $TARGETS; do
    [ "$kind" = proxy ] && seed
    lg "steady-1e-slo/$kind/r$r" "$kind" --entities "$ENTITIES" --rate "$SLO_RATE" --duration "$DUR" \
      --warmup "$WARM" --slo p99=1ms
    rc=$?; [ $rc = 0 ] || [ $rc = 3 ] || FAILS=$((FAILS + 1))
  done
done
for r in $(seq 1 $REPEATS); do
  for kind in $TARGETS; do
    [ "$kind" = proxy ] && seed
    lg "steady-1e/$kind/r$r" "$kind" --entities "$ENTITIES" --rate "$RATE" --duration "$DUR" \
      --warmup "$WARM" --slo p99=1ms
    rc=$?; [ $rc = 0 ] || [ $rc = 3 ] || FAILS=$((FAILS + 1))
  done
done
for r in $(seq 1 $REPEATS); do
  for kind in $TARGETS; do
    [ "$kind" = proxy ] && seed
    lg "batch100/$kind/r$r" "$kind" --entities "$ENTITIES" --rate "$RATE100" --batch 100 \
      --duration "$DUR" --warmup "$WARM" --connections 4 --inflight 16
    rc=$?; [ $rc = 0 ] || FAILS=$((FAILS + 1))
  done
done

# ---- 4. bursts ---------------------------------------------------------------------------------
for kind in $TARGETS; do
  [ "$kind" = proxy ] && seed
  lg "burst/$kind" "$kind" --entities "$ENTITIES" --rate $((RATE / 2)) --burst "$BURST" \
    --duration "$BURST_DUR" --warmup "$WARM" || FAILS=$((FAILS + 1))
done

# ---- 5. cold start: a fresh proxy (empty hot cache), a fifth of the keys never written -----------
COLD_ENTITIES=$((ENTITIES * 5 / 4))
for kind in $TARGETS; do
  if [ "$kind" = proxy ]; then seed; stop_proxy; start_proxy; fi
  lg "cold-start/$kind" "$kind" --entities "$COLD_ENTITIES" --cold-fraction 0.2 --rate "$RATE" \
    --duration "$DUR" --warmup 0s || FAILS=$((FAILS + 1))
done

# ---- 6. Redis killed (kill -9) for KILL_FOR seconds mid-run, restarted empty on the same port ----
KILL_CHECK=""
for kind in $TARGETS; do
  extra=()
  [ "$kind" = proxy ] && extra=(--slo errors=0)
  lg "redis-killed/$kind" "$kind" --entities "$ENTITIES" --rate "$RATE" --duration "$KILL_DUR" \
    --warmup 2s --timeout 2s "${extra[@]}" &
  LGPID=$!
  sleep "$KILL_AT"
  kill -9 "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null
  log "redis-server killed (kill -9); restarting it in ${KILL_FOR}s"
  sleep "$KILL_FOR"
  start_redis
  log "redis-server restarted on :$RP (empty)"
  wait "$LGPID"
  rc=$?
  if [ "$kind" = proxy ]; then
    deg=$(tsv_get redis-killed/proxy degraded)
    resp=$(tsv_get redis-killed/proxy achieved_rps)
    errs=$(tsv_get redis-killed/proxy errors)
    KILL_CHECK="errors=$errs degraded_share=$deg achieved=$resp/s rc=$rc"
    if [ $rc != 0 ] || [ "$errs" != 0 ] || ! awk -v d="$deg" 'BEGIN { exit !(d > 0) }'; then
      log "Redis-kill check FAILED: $KILL_CHECK"
      FAILS=$((FAILS + 1))
    else
      log "Redis-kill check passed: $KILL_CHECK"
    fi
  fi
done
http_get "$SP" /metrics >"$OUT/proxy-metrics-final.txt" 2>/dev/null
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- report ------------------------------------------------------------------------------------
# Written to a file of its own first: a quick run's report is that whole file; a full run's is
# then put into RESULTS.md, and stays in $OUT if that fails, so no run is lost.
REPORT="$OUT/report.md"
[ $QUICK = 1 ] && REPORT="$OUT/RESULTS-quick.md"
REL=${OUT#$ROOT/benches/}
[ "$REL" = "$OUT" ] && REL="$OUT"

# median NAME COLUMN: median over the repeats of a scenario/target.
summary_table() { # label prefixes (regex)
  awk -F'\t' -v pat="$1" -v rel="$REL" '
    function fmt(us) { if (us == "" ) return "-"; if (us < 1000) return sprintf("%d µs", us);
      if (us < 1000000) return sprintf("%.2f ms", us / 1000); return sprintf("%.2f s", us / 1e6) }
    function med(key, c,   n, i, j, t, a) { n = cnt[key]; for (i = 1; i <= n; i++) a[i] = v[key, c, i];
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return a[int((n + 1) / 2)] }
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    $1 ~ pat {
      key = $1; sub(/\/r[0-9]+$/, "", key)
      if (!(key in cnt)) { order[++nk] = key }
      n = ++cnt[key]
      for (c in col) v[key, c, n] = $col[c]
      if ($col["slo"] == "pass") pass[key]++
      if ($col["slo"] != "-") slo[key] = 1
      if ($col["error_kinds"] != "-") kinds[key] = kinds[key] " " $col["error_kinds"]
      f = $1; gsub("/", "_", f); plots[key] = plots[key] sprintf(" [%s](%s/%s.svg)", n, rel, f)
    }
    END {
      print "| scenario / target | runs | offered req/s | achieved req/s | p50 | p99 | p99.9 | max | errors | fresh / missing / degraded | cached | loadgen late | SLO p99 ≤ 1 ms | plots |"
      print "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
      for (k = 1; k <= nk; k++) {
        key = order[k]
        printf "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %.1f%% / %.1f%% / %.1f%% | %.1f%% | %.2f%% | %s |%s |\n", key, cnt[key],
          med(key, "rate"), med(key, "achieved_rps"), fmt(med(key, "p50_us")), fmt(med(key, "p99_us")),
          fmt(med(key, "p999_us")), fmt(med(key, "max_us")), med(key, "errors") (kinds[key] != "" ? " (" substr(kinds[key], 2) ")" : ""),
          100 * med(key, "fresh"), 100 * med(key, "missing"), 100 * med(key, "degraded"), 100 * med(key, "cached_share"),
          100 * med(key, "late_share"), (slo[key] ? sprintf("%d/%d pass", pass[key], cnt[key]) : "-"), plots[key]
      }
    }' "$TSV"
}
sweep_table() {
  awk -F'\t' -v targets="$TARGETS" '
    function fmt(us) { if (us < 1000) return sprintf("%d µs", us); return sprintf("%.2f ms", us / 1000) }
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    $1 ~ /^sweep\// { split($1, p, "/"); r = p[3] + 0; if (!(r in seen)) { seen[r] = 1; rates[++n] = r }
      cell[r, p[2]] = sprintf("%s / %s / %s%s", fmt($col["p50_us"]), fmt($col["p99_us"]), fmt($col["p999_us"]),
        ($col["errors"] > 0 ? sprintf(" (%d errors)", $col["errors"]) : "") ($col["achieved_rps"] < 0.98 * r ? sprintf(" (achieved %d/s)", $col["achieved_rps"]) : "")) }
    END {
      nt = split(targets, t, " ")
      printf "| rate req/s |"; for (j = 1; j <= nt; j++) printf " %s |", t[j]; print ""
      printf "|---|"; for (j = 1; j <= nt; j++) printf "---|"; print ""
      for (i = 1; i <= n; i++) for (k = i + 1; k <= n; k++) if (rates[k] < rates[i]) { x = rates[i]; rates[i] = rates[k]; rates[k] = x }
      for (i = 1; i <= n; i++) { printf "| %d |", rates[i]; for (j = 1; j <= nt; j++) printf " %s |", cell[rates[i], t[j]]; print "" }
    }' "$TSV"
}
ratio() { # scenario column: proxy/direct and twem/direct of the medians
  awk -F'\t' -v s="$1" -v c="$2" '
    function med(t,   n, i, j, x, a) { n = cnt[t]; for (i = 1; i <= n; i++) a[i] = v[t, i];
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x }
      return a[int((n + 1) / 2)] }
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    { split($1, p, "/"); if (p[1] == s) { t = p[2]; v[t, ++cnt[t]] = $col[c] } }
    END { d = med("direct"); if (d <= 0) { print "- | -"; exit }
      printf "%.3gx | %s\n", med("proxy") / d, (cnt["twem"] ? sprintf("%.3gx", med("twem") / d) : "-") }' "$TSV"
}

{
  # A full run's report sits under RESULTS.md's own title and current figures, so only the quick
  # run's whole file has a title.
  if [ $QUICK = 1 ]; then
    echo "# Benchmark results"
    echo
    echo "**Quick smoke run (--quick): tiny and short, not a measurement.**"
    echo
  fi
  echo "Generated by \`benches/scenarios.sh$([ $QUICK = 1 ] && echo ' --quick')\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')."
  echo
  echo "## Machine"
  echo
  echo "- $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM; Linux $(uname -r)"
  echo "- Everything on this one host, sharing its cores: redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), featureproxy (release, \`--shards 2\`), ${NUTCRACKER:+twemproxy ($($NUTCRACKER --version 2>&1 | head -1 | sed 's/^This is //')), }and loadgen (1 sender + 1 receiver thread), $PRIO_NOTE."
  echo "- The cores are shared and noisy (other work ran on them): load average $LOAD_START at the start, $LOAD_END at the end; busiest processes at the start: $BUSY_START"
  echo "- Key scenarios ran $REPEATS times; tables give the **median** of each column over the runs."
  echo
  echo "## loadgen's own limits"
  echo
  echo '```'
  cat "$OUT/selftest.txt"
  echo '```'
  echo
  echo "## Method"
  echo
  echo "- $ENTITIES entities of \`user_features\` (16 x f32) seeded through the proxy (\`loadgen seed\`, 1000 rows per PUT, 8 in flight; re-seeded when older than ${SEED_MAX_AGE}s before a proxy run so values are fresh). Keys \`u:{id}\`, Redis keys \`fp:user_features:v1:u:{id}\`."
  echo "- Entities: Zipf s = 0.99 over the key space, ranks scrambled into ids by a seeded Feistel permutation."
  echo "- Open loop: each of 4 connections has its own schedule (rate / 4 per connection); latency counts from each request's intended send time (no coordinated omission), up to 64 requests in flight per connection."
  echo "- The rate: a ${MAXDUR} closed-loop run (4 connections x 64 in flight) measured the proxy's maximum, **$MAX1 req/s** for 1 entity and **$MAX100 req/s** for batches of 100; the open-loop scenarios run at half of it (**$RATE req/s** and **$RATE100 req/s**), where a server should have headroom, so the latency is the service's and not a queue's."
  echo "- A closed-loop maximum with 64-deep pipelines overstates what a server sustains when requests arrive one by one: the sweep below shows where each target's tail actually breaks."
  echo "- Direct Redis and twemproxy get exactly the same requests as RESP GET (1 entity) or MGET (100), through the same loadgen engine."
  echo "- Bursts: base rate $((RATE / 2)) req/s, $BURST (rate x4 for the last part of each period). Cold start: a freshly started proxy (empty hot cache), over $COLD_ENTITIES entities of which the top fifth of ids (everything above the seeded $ENTITIES) was never written. Redis killed: \`kill -9\` of redis-server ${KILL_AT}s into the run, restarted empty on the same port ${KILL_FOR}s later."
  echo
  echo "## Results"
  echo
  echo "### Headline: 1-entity GETs, Zipf 0.99 over $ENTITIES entities, open loop"
  echo
  echo "\`steady-1e\` runs at half the proxy's closed-loop maximum ($RATE req/s), as the scenario prescribes; \`steady-1e-slo\` at $SLO_RATE req/s, $SLO_NOTE. \`loadgen run ... --slo p99=1ms\` exits 0 only when it holds."
  echo
  summary_table '^steady-1e'
  echo
  echo "For scale, the floor of this box: loadgen against its own in-process echo server (no proxy, no Redis), open loop: \`$(grep -m1 'open loop at   10000' "$OUT/selftest.txt" | sed 's/  */ /g')\`."
  echo
  echo "### Rate sweep (1 entity, one run per rate): p50 / p99 / p99.9"
  echo
  sweep_table
  echo
  echo "### All scenarios"
  echo
  summary_table '^[^s]|^steady'
  echo
  echo "### Ratios to Redis directly (medians)"
  echo
  echo "| scenario | metric | proxy / direct | twemproxy / direct |"
  echo "|---|---|---|---|"
  for s in steady-1e steady-1e-slo batch100; do
    for c in p50_us p99_us p999_us; do echo "| $s | $c | $(ratio "$s" "$c") |"; done
  done
  for s in max-closed-1e max-closed-100e; do echo "| $s | achieved_rps (max throughput) | $(ratio "$s" achieved_rps) |"; done
  echo
  echo "### Redis killed mid-run (proxy)"
  echo
  echo "Every request must be answered, DEGRADED with defaults while Redis is gone, and none may fail: **$([ -n "$KILL_CHECK" ] && (echo "$KILL_CHECK" | grep -q 'errors=0 ' && echo "$KILL_CHECK" | grep -q 'rc=0' && echo passed || echo FAILED))** ($KILL_CHECK). Per-second timeline of that run:"
  echo
  echo '```'
  sed -n '/^timeline/,/^SLO/p' "$OUT/redis-killed_proxy.txt" 2>/dev/null | grep -v '^SLO'
  echo '```'
  echo
  echo "## Commands"
  echo
  echo "Ports are the ones this run picked. Servers:"
  echo
  echo '```'
  echo "redis-server --port $RP --bind 127.0.0.1 --save '' --appendonly no"
  echo "target/release/featureproxy serve --config examples/features.toml --listen 127.0.0.1:$PP --stats-listen 127.0.0.1:$SP --redis redis://127.0.0.1:$RP --shards 2"
  [ -n "$TWEM_PID" ] && echo "nutcracker -c nutcracker.yml -s $TSP   # pool listen 127.0.0.1:$TP, redis: true, servers: [127.0.0.1:$RP:1]"
  echo '```'
  echo
  echo "Load, in order:"
  echo
  echo '```'
  sed "s#$ROOT/##g" "$CMDS"
  echo '```'
  echo
  echo "Per-run reports (text with the per-second timeline, JSON, SVG) are in \`$REL/\`."
} >"$REPORT"
if [ $QUICK = 1 ]; then
  log "wrote $REPORT"
else
  # Checked again: the file may have been edited by hand during the run.
  report_markers_ok "$MD" || die "$MARKERS_MISSING (the report is in $REPORT)"
  splice_report "$REPORT" "$MD" || die "could not put $REPORT into $MD; $MD is as it was"
  log "wrote $REPORT and put it into $MD, between its report markers"
fi

if [ $FAILS -gt 0 ]; then
  die "$FAILS run(s) failed (see $OUT)"
fi
log "all scenarios ran"
