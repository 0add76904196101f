# Sourced by benches/compare_builds.sh and benches/overload.sh: a work directory, free ports, and
# a private redis-server, all cleaned up on exit. Sets WORK, REDIS_PORT, REDIS_PID; scripts set
# PROXY_PID while a proxy runs, so that it is stopped on exit too. A script may set SERVER_ON
# (e.g. `taskset -c 0`) to start Redis under it.
command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/fp-bench.XXXXXX)
REDIS_PID=""; PROXY_PID=""
cleanup() {
  [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null
  [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 500); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.02; done; echo "nothing listens on $1" >&2; exit 1; }

REDIS_PORT=$(free_port)
${SERVER_ON[@]+"${SERVER_ON[@]}"} redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null &
REDIS_PID=$!
wait_port "$REDIS_PORT"
