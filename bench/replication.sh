#!/usr/bin/env bash
# Replication benchmark (not a test): one shard, a primary and one replica on loopback
# (127.0.1.41-42), PUT load with wrk against the primary, first with --replication async, then
# sync --min-acks 1. Reports PUT throughput of each (and the sync/async ratio) and the
# replication lag while loaded, sampled every 50 ms two ways:
#   metric: the replica's kvcache_node_replication_lag_records;
#   offsets: the primary's kvcache_node_replication_offset minus the replica's, scraped together.
#
#   bench/replication.sh NODE_BINARY
#
# Environment: DURATION [20s] CONNECTIONS [32] KEYS [100000] VALUE_SIZE [100] FSYNC [everysec]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NODE_BIN=$(readlink -f "${1:?usage: bench/replication.sh NODE_BINARY}")
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-32}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-100}
FSYNC=${FSYNC:-everysec}
PORT=$((20000 + RANDOM % 30000))
P=127.0.1.41:$PORT
R=127.0.1.42:$PORT
TMP=$(mktemp -d /tmp/kvcache-repl-bench.XXXXXX)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

echo token >"$TMP/token"
cat >"$TMP/topology.json" <<JSON
{"cluster": "bench", "epoch": 1, "shards": [{"id": 0, "slots": [[0, 16383]],
 "primary": {"name": "p", "addr": "$P"}, "replicas": [{"name": "r", "addr": "$R"}]}]}
JSON

run() {  # run MODE ARGS...
  local mode=$1; shift
  PIDS=()
  rm -rf "$TMP/p" "$TMP/r"
  for n in p r; do
    local addr=$P; [ $n = r ] && addr=$R
    "$NODE_BIN" --listen "$addr" --node-name $n --topology-file "$TMP/topology.json" \
      --cluster-token-file "$TMP/token" --data-dir "$TMP/$n" --fsync "$FSYNC" "$@" \
      >"$TMP/$n.log" 2>&1 &
    PIDS+=($!)
  done
  for _ in $(seq 1 200); do
    curl -sf "http://$P/readyz" >/dev/null && curl -sf "http://$R/readyz" >/dev/null && break
    sleep 0.05
  done
  /usr/bin/python3 - "$P" "$R" "$TMP/samples-$mode" <<'PY' &
import sys, time, threading, requests
p, r, out = sys.argv[1:]
def value(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
lags, diffs = [], []
s1, s2 = requests.Session(), requests.Session()
end = time.monotonic() + 600
with open(out, "w") as f:
    while time.monotonic() < end:
        try:
            tp = s1.get(f"http://{p}/metrics", timeout=2).text
            tr = s2.get(f"http://{r}/metrics", timeout=2).text
        except Exception:
            break
        lag = value(tr, "kvcache_node_replication_lag_records")
        diff = value(tp, "kvcache_node_replication_offset") - value(tr, "kvcache_node_replication_offset")
        f.write(f"{lag} {diff}\n"); f.flush()
        time.sleep(0.05)
PY
  local sampler=$!
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$HERE/kv.lua" "http://$P" -- mode=put \
    keys="$KEYS" vsize="$VALUE_SIZE" >"$TMP/wrk-$mode" 2>&1
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  local rps non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' "$TMP/wrk-$mode")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$TMP/wrk-$mode"); non2xx=${non2xx:-0}
  /usr/bin/python3 - "$mode" "$rps" "$non2xx" "$TMP/samples-$mode" <<'PY'
import sys
mode, rps, non2xx, path = sys.argv[1:]
rows = [tuple(map(float, l.split())) for l in open(path) if l.strip()]
rows = rows[len(rows) // 10:]  # skip the ramp-up
def pct(v, q):
    v = sorted(v); return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")
lag = [a for a, _ in rows]; diff = [max(0, b) for _, b in rows]
print(f"{mode}: {float(rps):.0f} PUT/s (non-2xx {non2xx}); samples {len(rows)}; "
      f"lag metric p50 {pct(lag, .5):.0f} p99 {pct(lag, .99):.0f} max {max(lag):.0f} records; "
      f"offset diff p50 {pct(diff, .5):.0f} p99 {pct(diff, .99):.0f} records")
PY
  echo "$rps" >"$TMP/rps-$mode"
  for pid in "${PIDS[@]}"; do kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

run async --replication async
run sync --replication sync --min-acks 1
/usr/bin/python3 -c "import sys; a, s = map(float, sys.argv[1:]); print(f'sync/async PUT throughput: {s / a:.2f}')" \
  "$(cat "$TMP/rps-async")" "$(cat "$TMP/rps-sync")"
