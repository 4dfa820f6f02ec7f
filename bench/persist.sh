#!/usr/bin/env bash
# Persistence benchmark (not a test): PUT throughput of kvcache-node under each --fsync mode as
# a ratio to --fsync no, and GET latency while snapshots run against the same node without
# them. Everything in one run on this machine; ratios, not absolute numbers, are the result.
#
#   bench/persist.sh NODE_BINARY
#
# Environment: DURATION [10s] CONNECTIONS [64] KEYS [100000] 
#              VALUE_SIZE [100]   (SNAPSHOT_KEYS [1000000] is also the recovery test's size)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NODE_BIN=$(readlink -f "${1:?usage: bench/persist.sh NODE_BINARY}")
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
KEYS=${KEYS:-100000}
SNAPSHOT_KEYS=${SNAPSHOT_KEYS:-1000000}
VALUE_SIZE=${VALUE_SIZE:-100}
TMP=$(mktemp -d /tmp/kvcache-persist-bench.XXXXXX)
NODE_PID=""

cleanup() {
  if [ -n "$NODE_PID" ] && kill -0 "$NODE_PID" 2>/dev/null; then
    kill -TERM "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

# start_node NAME ARGS... : starts a node on a free loopback port; sets NODE_PID and PORT.
start_node() {
  local name=$1; shift
  mkdir -p "$TMP/$name"
  "$NODE_BIN" --listen 127.0.0.1:0 --port-file "$TMP/$name/port" --data-dir "$TMP/$name/data" \
    "$@" >"$TMP/$name/log" 2>&1 &
  NODE_PID=$!
  for _ in $(seq 1 600); do
    if [ -s "$TMP/$name/port" ] && curl -sf "http://127.0.0.1:$(cat "$TMP/$name/port")/readyz" >/dev/null; then
      PORT=$(cat "$TMP/$name/port"); return 0
    fi
    sleep 0.05
  done
  echo "node $name did not become ready:" >&2; cat "$TMP/$name/log" >&2; exit 1
}

stop_node() {
  kill -TERM "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true; NODE_PID=""
}

# wrk_json MODE [extra wrk args...]: runs kv.lua against the node, prints its BENCHJSON line.
wrk_json() {
  local mode=$1; shift
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "$@" -s "$HERE/kv.lua" "http://127.0.0.1:$PORT" -- \
    mode="$mode" keys="$KEYS" vsize="$VALUE_SIZE" | sed -n 's/^BENCHJSON //p'
}

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

prefill() {
  wrk -t1 -c"$CONNECTIONS" -d120s -s "$HERE/prefill.lua" "http://127.0.0.1:$PORT" -- \
    keys="$1" vsize="$VALUE_SIZE" conns="$CONNECTIONS" | grep PREFILL_DONE || true
}

metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

echo "== PUT throughput by --fsync mode (wrk -t1 -c$CONNECTIONS -d$DURATION, $KEYS keys, ${VALUE_SIZE} B)"
declare -A RPS P99
for variant in no everysec always always-16-threads; do
  case $variant in
    always-16-threads) start_node "$variant" --fsync always --threads 16 ;;
    *) start_node "$variant" --fsync "$variant" ;;
  esac
  json=$(wrk_json put)
  RPS[$variant]=$(field "$json" rps)
  P99[$variant]=$(field "$json" lat_p99_us)
  fsyncs=$(metric kvcache_node_fsync_duration_seconds_count)
  records=$(metric kvcache_node_log_records_total)
  printf '  %-18s %9.0f req/s  p99 %6d us  log records %s, fdatasyncs %s\n' \
    "$variant" "${RPS[$variant]}" "${P99[$variant]}" "$records" "$fsyncs"
  stop_node
done
for variant in everysec always always-16-threads; do
  python3 -c "import sys; print(f'  ratio {sys.argv[1]:<18} / no: {float(sys.argv[2])/float(sys.argv[3]):.2f}x')" \
    "$variant" "${RPS[$variant]}" "${RPS[no]}"
done

echo "== GET p99 while snapshots run ($SNAPSHOT_KEYS keys of ${VALUE_SIZE} B)"
for variant in quiet snapshotting; do
  case $variant in
    quiet) start_node "$variant" --fsync everysec --snapshot-interval-seconds 86400 --snapshot-log-bytes 0 ;;
    snapshotting) start_node "$variant" --fsync everysec --snapshot-interval-seconds 1 --snapshot-log-bytes 0 ;;
  esac
  prefill "$SNAPSHOT_KEYS" >/dev/null
  before=$(metric kvcache_node_snapshots_total)
  KEYS=$SNAPSHOT_KEYS json=$(KEYS=$SNAPSHOT_KEYS wrk_json get)
  after=$(metric kvcache_node_snapshots_total)
  RPS[$variant]=$(field "$json" rps)
  P99[$variant]=$(field "$json" lat_p99_us)
  printf '  %-13s %9.0f req/s  p99 %6d us  snapshots during the run: %s (last took %ss)\n' \
    "$variant" "${RPS[$variant]}" "${P99[$variant]}" "$(( ${after%.*} - ${before%.*} ))" \
    "$(metric kvcache_node_snapshot_duration_seconds)"
  stop_node
done
python3 -c "import sys; print(f'  ratio p99 snapshotting / quiet: {float(sys.argv[1])/float(sys.argv[2]):.2f}x, throughput {float(sys.argv[3])/float(sys.argv[4]):.2f}x')" \
  "${P99[snapshotting]}" "${P99[quiet]}" "${RPS[snapshotting]}" "${RPS[quiet]}"

echo "== Recovery time for $SNAPSHOT_KEYS keys of ${VALUE_SIZE} B (start to /readyz)"
# time_restart NAME ARGS...: restarts on the "recovery" data dir; sets NODE_PID, PORT and SECS
# (seconds from exec to /readyz answering 200).
time_restart() {
  local name=$1; shift
  local t0
  t0=$(date +%s.%N)
  mkdir -p "$TMP/$name"
  "$NODE_BIN" --listen 127.0.0.1:0 --port-file "$TMP/$name/port" --data-dir "$TMP/recovery/data" \
    "$@" >"$TMP/$name/log" 2>&1 &
  NODE_PID=$!
  until [ -s "$TMP/$name/port" ] && curl -sf "http://127.0.0.1:$(cat "$TMP/$name/port")/readyz" >/dev/null; do
    sleep 0.01
  done
  PORT=$(cat "$TMP/$name/port")
  SECS=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$t0" "$(date +%s.%N)")
}
start_node recovery --fsync everysec --snapshot-interval-seconds 86400 --snapshot-log-bytes 0
prefill "$SNAPSHOT_KEYS" >/dev/null
keys=$(metric kvcache_node_keys)
stop_node
time_restart recovery-log --snapshot-interval-seconds 86400 --snapshot-log-bytes 0 \
  --snapshot-on-shutdown true
printf '  from the log only:  %s keys ready in %ss (node says recovery took %ss)\n' \
  "$(metric kvcache_node_keys)" "$SECS" "$(metric kvcache_node_recovery_duration_seconds)"
stop_node  # writes a snapshot on the way out
time_restart recovery-snapshot --snapshot-interval-seconds 86400 --snapshot-log-bytes 0
printf '  from a snapshot:    %s keys ready in %ss (node says recovery took %ss; loaded %s keys before)\n' \
  "$(metric kvcache_node_keys)" "$SECS" "$(metric kvcache_node_recovery_duration_seconds)" "$keys"
stop_node
