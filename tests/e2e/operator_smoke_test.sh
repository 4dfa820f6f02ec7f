#!/usr/bin/env bash
# End-to-end smoke test of the operator in localk8s: the real control plane, real kvcache-node
# pods. The operator runs outside the cluster with the admin kubeconfig. Applies the CRD and the
# sample (3 shards x 1 replica), waits for Available, writes and reads keys through the client
# Service's ClusterIP, then: failover of a crashed primary, reshard 3 -> 5 -> 2, replicas 1 -> 2,
# an image change rolled pod by pod (keys checked after each), the operator's /metrics, zero
# writes after convergence; deletes the KVCache and stops the operator with SIGTERM (exit 0).
#
# Usage: operator_smoke_test.sh REPO_ROOT BUILD_BIN_DIR
# Upstream binaries come from $LOCALK8S_BIN_DIR (default BUILD_BIN_DIR); kvcache-node and
# kvcache-operator from BUILD_BIN_DIR. Exits 77 (skipped) when not root or a binary is missing.
# Holds /tmp/localk8s.lock for the whole run and checks that no lk8s-* netns remains.
set -euo pipefail

repo=$(cd "${1:?usage: operator_smoke_test.sh REPO_ROOT BUILD_BIN_DIR}" && pwd)
own_bin=$(cd "${2:?usage: operator_smoke_test.sh REPO_ROOT BUILD_BIN_DIR}" && pwd)
bin=${LOCALK8S_BIN_DIR:-$own_bin}

if [ "$(id -u)" != 0 ]; then echo "SKIP: localk8s needs root"; exit 77; fi
for tool in "$bin/localk8s" "$bin/kubectl" "$bin/kube-apiserver" "$own_bin/kvcache-node" \
            "$own_bin/kvcache-operator"; do
  if [ ! -x "$tool" ]; then echo "SKIP: $tool missing"; exit 77; fi
done
if [ -z "${KVCACHE_LOCALK8S_LOCKED:-}" ]; then
  exec env KVCACHE_LOCALK8S_LOCKED=1 flock /tmp/localk8s.lock "$0" "$@"
fi

state=$(mktemp -d /tmp/kvc-e2e.XXXXXX)
lk_pid= op_pid=
cleanup() {
  local rc=$?
  if [ -n "$op_pid" ] && kill -0 "$op_pid" 2>/dev/null; then kill -KILL "$op_pid" || true; fi
  if [ -n "$lk_pid" ] && kill -0 "$lk_pid" 2>/dev/null; then
    kill -INT "$lk_pid"
    for _ in $(seq 240); do kill -0 "$lk_pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$lk_pid" 2>/dev/null; then kill -KILL "$lk_pid" || true; fi
    wait "$lk_pid" 2>/dev/null || true
  fi
  if ip netns list | grep -q '^lk8s-'; then
    echo "FAIL: lk8s-* network namespaces left behind; running localk8s down" >&2
    "$bin/localk8s" down --state-dir "$state" || true
    rc=1
  fi
  if [ "$rc" != 0 ]; then
    echo "---- operator log (tail; kept in /tmp/kvc-e2e-operator.log)" >&2
    cp "$state/operator.log" /tmp/kvc-e2e-operator.log 2>/dev/null || true
    "$bin/kubectl" get kvc demo -o yaml > /tmp/kvc-e2e-demo.yaml 2>/dev/null || true
    tail -40 "$state/operator.log" >&2 || true
  fi
  rm -rf "$state"
  exit $rc
}
trap cleanup EXIT INT TERM

# await SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.5 s until it succeeds.
await() {
  local secs=$1 what=$2; shift 2
  for _ in $(seq $((secs * 2))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "FAIL: timed out after ${secs}s waiting for $what" >&2
  return 1
}

"$bin/localk8s" up --state-dir "$state" --nodes 3 --bin-dir "$bin" \
  --image "kvcache-node=$own_bin/kvcache-node" >"$state/localk8s.log" 2>&1 &
lk_pid=$!
await 300 "localk8s" grep -q '^export KUBECONFIG=' "$state/localk8s.log"
export KUBECONFIG=$state/kubeconfig
k() { "$bin/kubectl" "$@"; }

k apply --server-side -f "$repo/crds/kvcache.io_kvcaches.yaml" >/dev/null
k wait --for condition=established --timeout=60s crd/kvcaches.kvcache.io >/dev/null

"$own_bin/kvcache-operator" --kubeconfig "$KUBECONFIG" --metrics-listen 127.0.0.1:0 \
  --port-file "$state/operator.port" --resync-seconds 30 >"$state/operator.log" 2>&1 &
op_pid=$!
await 30 "operator port file" test -s "$state/operator.port"
port=$(cat "$state/operator.port")
await 60 "operator /readyz" curl -sf "http://127.0.0.1:$port/readyz"
echo "ok   operator ready on port $port"

start=$(date +%s.%N)
k apply -f "$repo/crds/samples/kvcache-sample.yaml" >/dev/null
k wait --for=condition=Available --timeout=300s kvc/demo >/dev/null
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
echo "ok   demo Available after ${elapsed}s (apply -> Available, 3 shards x 1 replica)"
# Available = every primary serves; replicas may still be catching up: then Running, 6/6.
await 120 "phase Running with 6/6 ready" bash -c "[ \"\$('$bin/kubectl' get kvc demo -o jsonpath='{.status.phase} {.status.ready}')\" = 'Running 6/6' ]"
k get kvc demo
gen=$(k get kvc demo -o jsonpath='{.metadata.generation}')
[ "$(k get kvc demo -o jsonpath='{.status.observedGeneration}')" = "$gen" ] || { echo "FAIL: observedGeneration" >&2; exit 1; }
echo "ok   status: phase Running, 6/6 ready, observedGeneration $gen"

# Keys through the client Service's ClusterIP land on every shard and read back.
ip=$(k get svc demo -o jsonpath='{.spec.clusterIP}')
for i in $(seq 1 30); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary "value-$i" "http://$ip:8080/v1/key-$i")
  case "$code" in 200|201) ;; *) echo "FAIL: PUT key-$i -> $code" >&2; exit 1 ;; esac
done
for i in $(seq 1 30); do
  got=$(curl -sf "http://$ip:8080/v1/key-$i") || { echo "FAIL: GET key-$i" >&2; exit 1; }
  [ "$got" = "value-$i" ] || { echo "FAIL: key-$i = $got" >&2; exit 1; }
done
echo "ok   30 keys written and read through Service $ip:8080"

# Failover: the primary of shard 0 crashes twice (the second restart waits in the kubelet's
# back-off, longer than failover.timeoutSeconds) -> its replica is promoted, keys survive.
k patch kvc demo --type=merge -p '{"spec":{"failover":{"timeoutSeconds":3}}}' >/dev/null
t0=$(date +%s.%N)
"$bin/localk8s" kill-pod --state-dir "$state" -n default demo-0-0 >/dev/null
await 60 "demo-0-0 restarted" bash -c "[ \"\$('$bin/kubectl' get pod demo-0-0 -o jsonpath='{.status.containerStatuses[0].restartCount}')\" -ge 1 ]"
"$bin/localk8s" kill-pod --state-dir "$state" -n default demo-0-0 >/dev/null
await 90 "shard 0 failed over" bash -c "[ \"\$('$bin/kubectl' get kvc demo -o jsonpath='{.status.shards[0].primary}')\" = demo-0-1 ]"
echo "ok   shard 0 failed over to demo-0-1 $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-5)s after the first kill (timeoutSeconds 3)"
k wait --for=condition=Available --timeout=120s kvc/demo >/dev/null
await 120 "6/6 ready after the old primary returned" bash -c "[ \"\$('$bin/kubectl' get kvc demo -o jsonpath='{.status.ready}')\" = 6/6 ]"
for i in $(seq 1 30); do
  got=$(curl -sf "http://$ip:8080/v1/key-$i") || { echo "FAIL: GET key-$i after failover" >&2; exit 1; }
  [ "$got" = "value-$i" ] || { echo "FAIL: key-$i = $got after failover" >&2; exit 1; }
done
k get events --field-selector reason=PrimaryFailedOver -o name | grep -q . \
  || { echo "FAIL: no PrimaryFailedOver event" >&2; exit 1; }
echo "ok   30 keys intact after failover; old primary back as a replica (6/6); event recorded"

# Resharding 3 -> 5 -> 2: slots move with minimal movement, a drained shard's StatefulSet goes
# only after its slots left; every key stays readable.
check_keys() {  # check_keys WHEN: the 30 keys read back through the Service
  # A 503 + Retry-After while a role or slot moves is an answer clients retry (DESIGN.md §6),
  # as is a refused connection to a pod kube-proxy has not yet dropped from the Service; a 404
  # is a lost key. Each key gets 15 s of retries on 503 or no answer (000) only.
  local i code
  for i in $(seq 1 30); do
    for _ in $(seq 30); do
      code=$(curl -s -o "$state/got" -w '%{http_code}' "http://$ip:8080/v1/key-$i" || true)
      [ "$code" = 503 ] || [ "$code" = 000 ] || break
      sleep 0.5
    done
    [ "$code" = 200 ] && [ "$(cat "$state/got")" = "value-$i" ] ||
      { echo "FAIL: GET key-$i ($1): HTTP $code $(cat "$state/got")" >&2; return 1; }
  done
}
resharded() {  # resharded N: N shards own slots, no move in flight, every node ready
  [ "$(k get kvc demo -o jsonpath='{.status.shardCount} {.status.phase} {.status.resharding}')" = "$1 Running " ] &&
    [ "$(k get sts -l app.kubernetes.io/instance=demo -o name | wc -l)" = "$1" ]
}
for n in 5 2; do
  t0=$(date +%s.%N)
  k scale kvc demo --replicas=$n >/dev/null
  await 600 "reshard to $n shards" resharded $n
  echo "ok   resharded to $n shards in $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-5)s ($(k get kvc demo -o jsonpath='{.status.shards[*].slotCount}') slots)"
  check_keys "after resharding to $n"
done
echo "ok   30 keys intact after 3 -> 5 -> 2 shards"

# Replicas per shard 1 -> 2.
k patch kvc demo --type=merge -p '{"spec":{"replicasPerShard":2}}' >/dev/null
await 180 "6/6 ready" bash -c "[ \"\$('$bin/kubectl' get kvc demo -o jsonpath='{.status.ready}')\" = 6/6 ]"
k wait --for=condition=Available --timeout=60s kvc/demo >/dev/null
echo "ok   replicasPerShard 1 -> 2: 6/6 nodes ready (2 shards x 3)"

# Image change -> the operator rolls every pod, replicas first, with a switchover before each
# primary; keys stay readable.
t0=$(date +%s.%N)
k patch kvc demo --type=merge -p '{"spec":{"image":"kvcache/kvcache-node:0.1.1"}}' >/dev/null
rolled() {
  local sts pod want
  for sts in demo-0 demo-1; do
    want=$(k get sts "$sts" -o jsonpath='{.status.updateRevision}')
    for pod in $(k get pods -l "kvcache.io/shard=${sts#demo-},app.kubernetes.io/instance=demo" -o name); do
      [ "$(k get "$pod" -o jsonpath='{.metadata.labels.controller-revision-hash}')" = "$want" ] || return 1
      [ "$(k get "$pod" -o jsonpath='{.spec.containers[0].image}')" = kvcache/kvcache-node:0.1.1 ] || return 1
    done
  done
  [ "$(k get kvc demo -o jsonpath='{.status.phase}')" = Running ]
}
await 600 "rolling update" rolled
echo "ok   image change rolled 6 pods in $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-5)s; $(k get events --field-selector reason=PrimarySwitchedOver -o name | wc -l) switchovers"
for i in $(seq 1 30); do
  got=$(curl -sf "http://$ip:8080/v1/key-$i") || { echo "FAIL: GET key-$i after the rollout" >&2; exit 1; }
  [ "$got" = "value-$i" ] || { echo "FAIL: key-$i = $got after the rollout" >&2; exit 1; }
done
echo "ok   30 keys intact after the rolling update"

metrics=$(curl -sf "http://127.0.0.1:$port/metrics")
grep -q '^kvcache_operator_reconcile_total{result="success"}\|^kvcache_operator_reconcile_total{result="requeue"}' <<<"$metrics" \
  || { echo "FAIL: no reconcile metrics" >&2; exit 1; }
grep -q '^kvcache_operator_topology_pushes_total' <<<"$metrics" || { echo "FAIL: no push metric" >&2; exit 1; }
grep -q '^kvcache_operator_failovers_total 1' <<<"$metrics" || { echo "FAIL: failovers_total is not 1" >&2; exit 1; }
grep -q '^kvcache_operator_kvcache_available{.*name="demo".*} 1' <<<"$metrics" || { echo "FAIL: kvcache_available" >&2; exit 1; }
echo "ok   operator metrics"

# Converged: further reconciles write nothing (status, children, topology).
writes() { curl -sf "http://127.0.0.1:$port/metrics" | awk '/^kvcache_operator_writes_total/ {s += $2} END {print s + 0}'; }
reconciles() { curl -sf "http://127.0.0.1:$port/metrics" | awk '/^kvcache_operator_reconcile_total/ {s += $2} END {print s + 0}'; }
w0=$(writes); r0=$(reconciles)
await 90 "two more reconciles" bash -c "[ \$(curl -sf http://127.0.0.1:$port/metrics | awk '/^kvcache_operator_reconcile_total/ {s += \$2} END {print s + 0}') -ge $((r0 + 2)) ]"
w1=$(writes)
[ "$w1" = "$w0" ] && echo "ok   $(( $(reconciles) - r0 )) reconciles after convergence made 0 writes" \
  || { echo "FAIL: writes after convergence: $w0 -> $w1" >&2; exit 1; }

k delete kvc demo --wait=true --timeout=120s >/dev/null
await 120 "StatefulSets collected" bash -c "[ -z \"\$('$bin/kubectl' get sts -l app.kubernetes.io/instance=demo -o name)\" ]"
echo "ok   KVCache deleted, children collected"

kill -TERM "$op_pid"
if wait "$op_pid"; then echo "ok   operator exited 0 on SIGTERM"; else echo "FAIL: operator exit $?" >&2; exit 1; fi
op_pid=
echo "e2e smoke passed"
