#!/usr/bin/env bash
# Side-by-side benchmark of kvcache-node against nginx (the practical HTTP ceiling: a fixed
# 100-byte body) and webdis+redis (the nearest REST key-value peer), in one run, plus
# redis-benchmark for reference and memory per key at 1M keys (node vs redis-server).
#
#   bench/run.sh [--memory | --no-memory] NODE_BINARY
#
# See bench/README.md for the scenarios, the environment knobs and how to read the ratios.
# Results: a table on stdout and bench/results/<timestamp>.md (+ .jsonl with the raw numbers).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"

usage() {
  cat <<'EOF'
usage: bench/run.sh [--memory | --no-memory] NODE_BINARY

  (default)     HTTP scenarios, redis-benchmark reference, then memory per key (~4-5 min)
  --memory      only the memory-per-key test (1M keys, node vs redis-server)
  --no-memory   skip the memory-per-key test

environment (defaults in brackets):
  DURATION [10s]  CONNECTIONS [64]  THREADS [1]   wrk -d, -c, -t for every scenario
  PIN [0]         1 = servers on CPU SERVER_CPUS [1], clients on CPU CLIENT_CPUS [0] (taskset)
  SERVER_THREADS  node --threads = nginx worker_processes = webdis threads
                  [usable CPUs of the server: nproc, or the CPUs in SERVER_CPUS when PIN=1]
  SCENARIOS ["get_hit get_miss put mixed get_hit_newconn redis_benchmark"]
  KEYS [100000]  VALUE_SIZE [100]  MEM_KEYS [1000000]  RB_REQUESTS [200000]
  REPEAT [1]      run every scenario/server pair this many times; the report shows the
                  median by req/s (use 3 on a machine that other work keeps busy)
  RESULTS_DIR [bench/results]  KEEP_TMP [0]
EOF
}

MODE=all
NODE_BIN=""
for arg in "$@"; do
  case "$arg" in
    --memory) MODE=memory ;;
    --no-memory) MODE=http ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "run.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
    *) [ -z "$NODE_BIN" ] || { usage >&2; exit 2; }; NODE_BIN=$arg ;;
  esac
done
[ -n "$NODE_BIN" ] || { usage >&2; exit 2; }
[ -x "$NODE_BIN" ] || { echo "run.sh: $NODE_BIN is not an executable (make build?)" >&2; exit 2; }
NODE_BIN=$(readlink -f "$NODE_BIN")

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
PIN=${PIN:-0}
SERVER_CPUS=${SERVER_CPUS:-1}
CLIENT_CPUS=${CLIENT_CPUS:-0}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-100}
MEM_KEYS=${MEM_KEYS:-1000000}
RB_REQUESTS=${RB_REQUESTS:-200000}
REPEAT=${REPEAT:-1}
SCENARIOS=${SCENARIOS:-"get_hit get_miss put mixed get_hit_newconn redis_benchmark"}
RESULTS_DIR=${RESULTS_DIR:-$REPO/bench/results}
PYTHON=${PYTHON:-$(command -v python3 || echo /usr/bin/python3)}

if [ "$PIN" = 1 ]; then
  SRV=(taskset -c "$SERVER_CPUS")
  CLI=(taskset -c "$CLIENT_CPUS")
  default_threads=$(taskset -c "$SERVER_CPUS" nproc)
else
  SRV=()
  CLI=()
  # Unpinned, wrk keeps one core busy: a server with as many threads as cores then has two
  # threads fighting for one core (measured here: nginx 111k -> 130k req/s and p99 3.5 ms ->
  # 0.65 ms with one worker instead of two; the node 86k -> 113k, p99 4.3 ms -> 0.8 ms). So
  # every server gets the cores left over once the client has one.
  default_threads=$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))
fi
SERVER_THREADS=${SERVER_THREADS:-$default_threads}

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- tools (Debian packages)
ensure_tools() {
  local missing=() pair cmd pkg
  for pair in wrk:wrk nginx:nginx-light webdis:webdis redis-server:redis-server \
              redis-cli:redis-tools redis-benchmark:redis-tools curl:curl taskset:util-linux; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  command -v "$PYTHON" >/dev/null 2>&1 || missing+=(python3)
  [ ${#missing[@]} -eq 0 ] && return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  [ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]} (apt-get install them as root)"
  log "installing Debian packages: ${missing[*]}"
  # Keep the packages' own services (nginx :80, redis :6379, webdis :7379) from starting.
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || { if [ $made_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; die "apt-get install failed"; }
  if [ $made_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  return 0
}

# ---------------------------------------------------------------- processes and cleanup
TMP=$(mktemp -d /tmp/kvcache-bench.XXXXXX)
declare -A LIVE=()  # processes this script started and has not yet reaped: pid -> 1

stop_pid() {  # stop one process we started: TERM, up to 5 s, then KILL; reap it
  local pid=$1 i
  [ -n "${LIVE[$pid]:-}" ] || return 0  # never started here, or already reaped
  unset "LIVE[$pid]"
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${!LIVE[@]}"; do stop_pid "$pid"; done
  if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() {  # URL PID: until the server answers anything (any status)
  local url=$1 pid=$2 i
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || die "server (pid $pid) exited while starting; see $TMP"
    curl -s -o /dev/null --max-time 1 "$url" && return 0
    sleep 0.1
  done
  die "no answer from $url after 10 s"
}

vmrss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }

# Prints the node's pid and port as "PID PORT"; the node's files go in DIR.
start_node() {
  local dir=$1
  mkdir -p "$dir/data"
  "${SRV[@]}" "$NODE_BIN" --listen 127.0.0.1:0 --port-file "$dir/port" --data-dir "$dir/data" \
    --threads "$SERVER_THREADS" > "$dir/node.log" 2>&1 &
  local pid=$! i
  LIVE[$pid]=1
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || die "kvcache-node exited at start: $(tail -5 "$dir/node.log")"
    if [ -s "$dir/port" ] && grep -qE '^[0-9]+$' "$dir/port"; then break; fi
    sleep 0.1
  done
  local port; port=$(cat "$dir/port")
  [ -n "$port" ] || die "kvcache-node wrote no port file"
  wait_http "http://127.0.0.1:$port/healthz" "$pid"
  NODE_PID=$pid NODE_PORT=$port
}

start_redis() {  # DIR -> REDIS_PID REDIS_PORT
  local dir=$1; mkdir -p "$dir"
  REDIS_PORT=$(free_port)
  "${SRV[@]}" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --daemonize no --dir "$dir" --logfile "$dir/redis.log" &
  REDIS_PID=$!
  LIVE[$REDIS_PID]=1
  local i
  for i in $(seq 100); do
    kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited at start: $(tail -5 "$dir/redis.log")"
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  die "redis-server did not answer PING"
}

start_webdis() {  # DIR REDIS_PORT -> WEBDIS_PID WEBDIS_PORT
  local dir=$1 rport=$2; mkdir -p "$dir"
  WEBDIS_PORT=$(free_port)
  cat > "$dir/webdis.json" <<EOF
{
  "redis_host": "127.0.0.1", "redis_port": $rport, "redis_auth": null,
  "http_host": "127.0.0.1", "http_port": $WEBDIS_PORT,
  "threads": $SERVER_THREADS, "pool_size": 20,
  "daemonize": false, "database": 0,
  "verbosity": 1, "logfile": "$dir/webdis.log"
}
EOF
  "${SRV[@]}" webdis "$dir/webdis.json" > "$dir/webdis.out" 2>&1 &
  WEBDIS_PID=$!
  LIVE[$WEBDIS_PID]=1
  wait_http "http://127.0.0.1:$WEBDIS_PORT/PING" "$WEBDIS_PID"
}

start_nginx() {  # DIR -> NGINX_PID NGINX_PORT
  local dir=$1; mkdir -p "$dir/logs"
  NGINX_PORT=$(free_port)
  local body; body=$(head -c "$VALUE_SIZE" /dev/zero | tr '\0' 'v')
  cat > "$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes $SERVER_THREADS;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    default_type application/octet-stream;
    # The miss scenario's keys: the same 404 body the node sends.
    location ^~ /v1/miss { return 404 '{"code":404,"error":"key not found"}'; }
    location / {
      if (\$request_method = PUT) { return 204; }
      return 200 '$body';
    }
  }
}
EOF
  "${SRV[@]}" nginx -e "$dir/logs/error.log" -p "$dir/" -c "$dir/nginx.conf" > "$dir/nginx.out" 2>&1 &
  NGINX_PID=$!
  LIVE[$NGINX_PID]=1
  wait_http "http://127.0.0.1:$NGINX_PORT/v1/key1" "$NGINX_PID"
}

# Redis protocol for "SET key<i> <value>" i = 1..N, for redis-cli --pipe.
gen_resp() {
  awk -v n="$1" -v vs="$2" 'BEGIN {
    v = ""; for (j = 0; j < vs; j++) v = v "v";
    for (i = 1; i <= n; i++) { k = "key" i;
      printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, vs, v } }'
}

load_redis() {  # PORT N
  local out
  out=$(gen_resp "$2" "$VALUE_SIZE" | "${CLI[@]}" redis-cli -p "$1" --pipe 2>&1) \
    || die "redis-cli --pipe failed: $out"
  grep -q 'errors: 0' <<<"$out" || die "redis-cli --pipe reported errors: $out"
}

# Runs a client command in the background and waits for it, so that a TERM/INT to this script
# is handled at once (bash defers traps until a foreground child ends) and cleanup stops it.
run_client() {  # OUTFILE CMD...
  local out=$1; shift
  "$@" > "$out" 2>&1 &
  local pid=$! rc=0
  LIVE[$pid]=1
  wait "$pid" || rc=$?
  unset "LIVE[$pid]"
  return "$rc"
}

load_node() {  # PORT N -> LOAD_SECS
  local port=$1 n=$2 t0 t1 out="$TMP/prefill-$2.txt"
  t0=$(date +%s.%N)
  run_client "$out" "${CLI[@]}" timeout 600 wrk -t1 -c"$CONNECTIONS" -d590s -s "$HERE/prefill.lua" \
    "http://127.0.0.1:$port" -- put=/v1/ keys="$n" vsize="$VALUE_SIZE" conns="$CONNECTIONS" \
    || die "node prefill failed: $(cat "$out")"
  t1=$(date +%s.%N)
  grep -q 'PREFILL_DONE' "$out" || die "node prefill did not finish: $(cat "$out")"
  local keys
  keys=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^kvcache_node_keys /{printf "%d", $2}')
  [ "$keys" -ge "$n" ] 2>/dev/null || die "node holds '$keys' keys after loading $n"
  LOAD_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b - a}')
}

RESULTS=$TMP/results.jsonl
: > "$RESULTS"

json_line() { printf '%s\n' "$1" >> "$RESULTS"; }

# CPU accounting, so that a run disturbed by other work on the machine can be recognised and
# so that CPU per request (less sensitive to such noise than req/s) can be reported.
CLK_TCK=$(getconf CLK_TCK)
proc_ticks() {  # PID... -> utime+stime ticks summed
  local t=0 p v
  for p in "$@"; do
    v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
# user + nice + system + steal of all CPUs (irq/softirq left out: much of it is our own loopback
# traffic, not charged to any process).
sys_busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $9; exit}' /proc/stat; }
children_cpu_s() {  # user+sys s of reaped children; call as `children_cpu_s > FILE`, never in $()
  times > "$TMP/times"  # a builtin in this shell: $(times) would report a subshell's children
  awk 'END { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub(/s$/, "", a[2]);
    t += a[1] * 60 + a[2] } printf "%.3f", t }' "$TMP/times"
}
server_pids() {  # SERVER -> the processes that make up that server, now
  case $1 in
    kvcache-node) echo "$NODE_PID" ;;
    nginx) echo "$NGINX_PID" $(pgrep -P "$NGINX_PID" || true) ;;
    webdis) echo "$WEBDIS_PID $REDIS_PID" ;;
  esac
}


# run_wrk SCENARIO SERVER URL [wrk options...] -- [kv.lua args...]
run_wrk() {
  local scen=$1 srv=$2 url=$3; shift 3
  local opts=() args=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  args=("$@")
  local out="$TMP/wrk-$scen-$srv.txt" pids s0 s1 b0 b1 c0 c1
  # shellcheck disable=SC2207
  pids=($(server_pids "$srv"))
  children_cpu_s > "$TMP/c0"
  s0=$(proc_ticks "${pids[@]}"); b0=$(sys_busy_ticks)
  run_client "$out" "${CLI[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
    -s "$HERE/kv.lua" "${opts[@]}" "$url" -- keys="$KEYS" vsize="$VALUE_SIZE" "${args[@]}" \
    || log "wrk exited non-zero for $scen/$srv (see below)"
  s1=$(proc_ticks "${pids[@]}"); b1=$(sys_busy_ticks)
  children_cpu_s > "$TMP/c1"
  c0=$(cat "$TMP/c0"); c1=$(cat "$TMP/c1")
  local j cpu
  j=$(sed -n 's/^BENCHJSON {/{/p' "$out" | tail -1)
  if [ -z "$j" ]; then
    log "no result from wrk for $scen/$srv:"; cat "$out" >&2
    j='{"failed":true}'
  fi
  cpu=$(awk -v s=$((s1 - s0)) -v b=$((b1 - b0)) -v c0="$c0" -v c1="$c1" -v hz="$CLK_TCK" \
    'BEGIN { printf "\"server_cpu_s\":%.2f,\"client_cpu_s\":%.2f,\"busy_cpu_s\":%.2f,", s/hz, c1-c0, b/hz }')
  json_line "{\"scenario\":\"$scen\",\"server\":\"$srv\",$cpu${j#\{}"
  "$PYTHON" "$HERE/report.py" --one "$RESULTS" >&2 || true
  sleep 1
}

# Server-specific kv.lua path arguments.
node_args=(get=/v1/ put=/v1/)
nginx_args=(get=/v1/ put=/v1/)
webdis_args=(get=/GET/ gsuf=.txt put=/SET/)

sanity() {  # SERVER URL_HIT URL_MISS: one curl each, recorded in the report
  local srv=$1 hit miss
  hit=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "$2")
  miss=$(curl -s -o /dev/null -w '%{http_code}' "$3")
  json_line "{\"scenario\":\"sanity\",\"server\":\"$srv\",\"hit\":\"$hit\",\"miss\":\"$miss\"}"
  [ "$hit" = "200 $VALUE_SIZE" ] || log "WARNING: $srv GET hit answered '$hit' (want '200 $VALUE_SIZE')"
  [ "$miss" = 404 ] || log "WARNING: $srv GET miss answered '$miss' (want 404)"
}

want() { [[ " $SCENARIOS " == *" $1 "* ]]; }

http_bench() {
  log "starting servers (threads/workers: $SERVER_THREADS, pinned: $PIN)"
  start_node "$TMP/node"
  start_nginx "$TMP/nginx"
  start_redis "$TMP/redis"
  start_webdis "$TMP/webdis" "$REDIS_PORT"
  local node="http://127.0.0.1:$NODE_PORT" nginx="http://127.0.0.1:$NGINX_PORT"
  local webdis="http://127.0.0.1:$WEBDIS_PORT"
  log "node :$NODE_PORT (pid $NODE_PID)  nginx :$NGINX_PORT  webdis :$WEBDIS_PORT -> redis :$REDIS_PORT"

  log "prefill: $KEYS keys of $VALUE_SIZE B into the node (wrk prefill.lua) and redis (--pipe)"
  load_node "$NODE_PORT" "$KEYS"
  json_line "{\"scenario\":\"prefill\",\"server\":\"kvcache-node\",\"keys\":$KEYS,\"seconds\":$LOAD_SECS}"
  load_redis "$REDIS_PORT" "$KEYS"
  sanity kvcache-node "$node/v1/key1" "$node/v1/miss1"
  sanity nginx "$nginx/v1/key1" "$nginx/v1/miss1"
  sanity webdis "$webdis/GET/key1.txt" "$webdis/GET/miss1.txt"

  local scen mode rep
  for scen in get_hit get_miss put mixed; do
    want "$scen" || continue
    case $scen in get_hit) mode=get ;; get_miss) mode=miss ;; put) mode=put ;; mixed) mode=mix ;; esac
    log "scenario $scen: wrk -t$THREADS -c$CONNECTIONS -d$DURATION against each server"
    for rep in $(seq "$REPEAT"); do
      run_wrk "$scen" kvcache-node "$node" -- mode=$mode seed="$rep" "${node_args[@]}"
      run_wrk "$scen" nginx "$nginx" -- mode=$mode seed="$rep" "${nginx_args[@]}"
      run_wrk "$scen" webdis "$webdis" -- mode=$mode seed="$rep" "${webdis_args[@]}"
    done
  done
  if want get_hit_newconn; then
    log "scenario get_hit_newconn: GET hits with 'Connection: close' (node vs nginx)"
    for rep in $(seq "$REPEAT"); do
      run_wrk get_hit_newconn kvcache-node "$node" -H 'Connection: close' -- mode=get seed="$rep" "${node_args[@]}"
      sleep 2
      run_wrk get_hit_newconn nginx "$nginx" -H 'Connection: close' -- mode=get seed="$rep" "${nginx_args[@]}"
      sleep 2
    done
  fi
  if want redis_benchmark; then
    log "redis-benchmark GET/SET (unpipelined, -c$CONNECTIONS, -n $RB_REQUESTS, -d $VALUE_SIZE)"
    run_client "$TMP/redis-benchmark.csv" "${CLI[@]}" redis-benchmark -h 127.0.0.1 \
      -p "$REDIS_PORT" -t set,get -n "$RB_REQUESTS" -c "$CONNECTIONS" -d "$VALUE_SIZE" \
      -r "$KEYS" --csv || log "redis-benchmark failed: $(cat "$TMP/redis-benchmark.csv")"
    "$PYTHON" "$HERE/report.py" --redis-csv "$TMP/redis-benchmark.csv" >> "$RESULTS" || true
  fi

  # Node health after the run: its key count, and any warning/error lines it logged.
  local nkeys; nkeys=$(curl -s "$node/metrics" | awk '/^kvcache_node_keys /{printf "%d", $2}')
  local nlog; nlog=$(grep -cE '^[EWF][0-9]{4} ' "$TMP/node/node.log" || true)
  json_line "{\"scenario\":\"node_after\",\"server\":\"kvcache-node\",\"keys\":${nkeys:-0},\"log_warn_error_lines\":${nlog:-0}}"
  if [ "${nlog:-0}" -gt 0 ]; then
    log "node logged $nlog warning/error lines, first ones:"; grep -E '^[EWF][0-9]{4} ' "$TMP/node/node.log" | head -5 >&2
    grep -E '^[EWF][0-9]{4} ' "$TMP/node/node.log" | head -20 > "$TMP/node-log-excerpt.txt"
  fi
  stop_pid "$WEBDIS_PID"; stop_pid "$REDIS_PID"; stop_pid "$NGINX_PID"; stop_pid "$NODE_PID"
}

memory_bench() {
  log "memory per key: $MEM_KEYS keys of $VALUE_SIZE B, kvcache-node vs redis-server"
  start_node "$TMP/mem-node"
  sleep 0.5
  local before after secs
  before=$(vmrss_kb "$NODE_PID")
  load_node "$NODE_PORT" "$MEM_KEYS"
  secs=$LOAD_SECS
  sleep 0.5
  after=$(vmrss_kb "$NODE_PID")
  local acct; acct=$(curl -s "http://127.0.0.1:$NODE_PORT/metrics" | awk '/^kvcache_node_memory_bytes /{printf "%d", $2}')
  json_line "{\"scenario\":\"memory\",\"server\":\"kvcache-node\",\"keys\":$MEM_KEYS,\"rss_before_kb\":$before,\"rss_after_kb\":$after,\"load_seconds\":$secs,\"accounted_bytes\":${acct:-0}}"
  log "node: VmRSS $before kB -> $after kB, loaded in ${secs}s"
  stop_pid "$NODE_PID"

  start_redis "$TMP/mem-redis"
  sleep 0.5
  before=$(vmrss_kb "$REDIS_PID")
  local t0 t1; t0=$(date +%s.%N)
  load_redis "$REDIS_PORT" "$MEM_KEYS"
  t1=$(date +%s.%N)
  sleep 0.5
  after=$(vmrss_kb "$REDIS_PID")
  local dbsize used
  dbsize=$(redis-cli -p "$REDIS_PORT" dbsize)
  used=$(redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory:/{gsub(/\r/,"",$2); print $2}')
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b - a}')
  [ "$dbsize" = "$MEM_KEYS" ] || log "WARNING: redis holds $dbsize keys, want $MEM_KEYS"
  json_line "{\"scenario\":\"memory\",\"server\":\"redis-server\",\"keys\":$dbsize,\"rss_before_kb\":$before,\"rss_after_kb\":$after,\"load_seconds\":$secs,\"accounted_bytes\":${used:-0}}"
  log "redis: VmRSS $before kB -> $after kB, loaded in ${secs}s"
  stop_pid "$REDIS_PID"
}

# ---------------------------------------------------------------- main
ensure_tools
# Run a private copy: a rebuild of NODE_BINARY during the run must not change what is measured.
cp "$NODE_BIN" "$TMP/kvcache-node-under-test"
NODE_SHA=$(sha256sum "$TMP/kvcache-node-under-test" | cut -c1-12)
NODE_MTIME=$(date -u -r "$NODE_BIN" '+%Y-%m-%d %H:%M:%S UTC')
NODE_ORIG=$NODE_BIN
NODE_BIN=$TMP/kvcache-node-under-test
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
START=$(date +%s)
BENCH_DATE=$(date -u '+%Y-%m-%d %H:%M:%S UTC') \
BENCH_COMMAND="DURATION=$DURATION CONNECTIONS=$CONNECTIONS THREADS=$THREADS PIN=$PIN REPEAT=$REPEAT bench/run.sh $*" \
BENCH_MODE=$MODE BENCH_NODE_BINARY="$NODE_ORIG (built $NODE_MTIME, sha256 $NODE_SHA...)" \
BENCH_NODE_VERSION=$("$NODE_BIN" --version 2>&1 | head -1) \
BENCH_GIT="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no commit')$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo ', dirty tree')" \
BENCH_CPUS="$(nproc --all) x $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)" \
BENCH_PINNED=$([ "$PIN" = 1 ] && echo "yes: servers on CPU $SERVER_CPUS, clients (wrk, redis-benchmark, loaders) on CPU $CLIENT_CPUS" || echo "no: clients and servers share all CPUs") \
BENCH_SERVER_THREADS=$SERVER_THREADS BENCH_WRK="-t$THREADS -c$CONNECTIONS -d$DURATION" \
BENCH_NCPU=$(nproc --all) BENCH_LOAD_BEFORE="$(cut -d" " -f1-3 /proc/loadavg)" BENCH_REPEAT=$REPEAT BENCH_KEYS=$KEYS BENCH_VALUE_SIZE=$VALUE_SIZE BENCH_MEM_KEYS=$MEM_KEYS \
BENCH_PACKAGES=$(dpkg-query -W -f='${Package} ${Version}, ' wrk nginx-light webdis redis-server redis-tools 2>/dev/null | sed 's/, $//') \
  "$PYTHON" "$HERE/report.py" --make-meta "$TMP/meta.json"

[ "$MODE" = memory ] || http_bench
[ "$MODE" = http ] || memory_bench

mkdir -p "$RESULTS_DIR"
cp "$RESULTS" "$RESULTS_DIR/$STAMP.jsonl"
"$PYTHON" "$HERE/report.py" --meta "$TMP/meta.json" --elapsed "$(( $(date +%s) - START ))" \
  --node-log "$TMP/node-log-excerpt.txt" "$RESULTS" > "$RESULTS_DIR/$STAMP.md"
cat "$RESULTS_DIR/$STAMP.md"
log "written $RESULTS_DIR/$STAMP.md (raw numbers: $STAMP.jsonl)"
