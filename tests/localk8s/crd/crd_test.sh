#!/usr/bin/env bash
# The KVCache CRD against the real API server of localk8s: it is accepted and established, the
# sample applies with its defaults filled in, the printer columns and the scale and status
# subresources work, and each kind of bad resource is refused with a clear message.
#
# Usage: crd_test.sh REPO_ROOT [BIN_DIR]
# BIN_DIR (or $LOCALK8S_BIN_DIR) holds localk8s and kubectl; exits 77 (skipped) when they are
# missing or when not root. Holds /tmp/localk8s.lock for the whole run (one localk8s per
# machine) and brings the cluster down, checking that no lk8s-* netns remains.
set -euo pipefail

repo=$(cd "${1:?usage: crd_test.sh REPO_ROOT [BIN_DIR]}" && pwd)
bin=${LOCALK8S_BIN_DIR:-${2:-$repo/build/bin}}

if [ "$(id -u)" != 0 ]; then echo "SKIP: localk8s needs root"; exit 77; fi
for tool in localk8s kubectl kube-apiserver etcd; do
  if [ ! -x "$bin/$tool" ]; then echo "SKIP: $bin/$tool missing (make localk8s)"; exit 77; fi
done
if [ -z "${KVCACHE_LOCALK8S_LOCKED:-}" ]; then
  exec env KVCACHE_LOCALK8S_LOCKED=1 flock /tmp/localk8s.lock "$0" "$@"
fi

state=$(mktemp -d /tmp/kvc-crd-test.XXXXXX)
log=$state/localk8s.log
lk_pid=
failures=0

cleanup() {
  local rc=$?
  if [ -n "$lk_pid" ] && kill -0 "$lk_pid" 2>/dev/null; then
    kill -INT "$lk_pid"
    # The launcher stops pods, components and host changes itself; give it two minutes.
    for _ in $(seq 240); do kill -0 "$lk_pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$lk_pid" 2>/dev/null; then kill -KILL "$lk_pid" || true; fi
    wait "$lk_pid" 2>/dev/null || true
  fi
  if ip netns list | grep -q '^lk8s-'; then
    echo "FAIL: lk8s-* network namespaces left behind; running localk8s down" >&2
    "$bin/localk8s" down --state-dir "$state" || true
    rc=1
  fi
  rm -rf "$state"
  exit $rc
}
trap cleanup EXIT INT TERM

"$bin/localk8s" up --state-dir "$state" --nodes 1 --bin-dir "$bin" >"$log" 2>&1 &
lk_pid=$!
for _ in $(seq 600); do
  if grep -q '^export KUBECONFIG=' "$log"; then break; fi
  if ! kill -0 "$lk_pid" 2>/dev/null; then cat "$log" >&2; echo "FAIL: localk8s exited" >&2; exit 1; fi
  sleep 0.5
done
grep -q '^export KUBECONFIG=' "$log" || { tail -30 "$log" >&2; echo "FAIL: localk8s not ready in 5 min" >&2; exit 1; }
export KUBECONFIG=$state/kubeconfig
k() { "$bin/kubectl" "$@"; }

pass() { echo "ok   $1"; }
fail() { echo "FAIL $1" >&2; failures=$((failures + 1)); }

# expect_refused NAME PATTERN: stdin is a manifest the API server must refuse with PATTERN.
expect_refused() {
  local name=$1 pattern=$2 out
  if out=$(k apply -f - 2>&1); then
    fail "$name: accepted: $out"
  elif grep -qE -- "$pattern" <<<"$out"; then
    pass "$name refused: $(grep -oE -- "$pattern" <<<"$out" | head -1)"
  else
    fail "$name: refused without /$pattern/: $out"
  fi
}

# 1. The CRD is accepted and established.
k apply --server-side -f "$repo/crds/kvcache.io_kvcaches.yaml"
k wait --for condition=established --timeout=60s crd/kvcaches.kvcache.io
k wait --for condition=NamesAccepted --timeout=60s crd/kvcaches.kvcache.io
pass "CRD established"

# 2. The sample applies and its defaults are filled in by the API server.
k apply -f "$repo/crds/samples/kvcache-sample.yaml"
got=$(k get kvc demo -o jsonpath='{.spec.shards} {.spec.replicasPerShard} {.spec.pod.antiAffinity} {.spec.service.port} {.spec.service.type} {.spec.failover.enabled} {.spec.podDisruptionBudget.maxUnavailable} {.spec.storage.reclaimPolicy}')
[ "$got" = "3 1 Preferred 8080 ClusterIP true 1 Keep" ] && pass "sample defaults ($got)" || fail "sample defaults: $got"

# 3. Printer columns and the short name.
header=$(k get kvc | head -1)
[[ "$header" =~ NAME\ +SHARDS\ +REPLICAS\ +READY\ +PHASE\ +AGE ]] && pass "printer columns" || fail "printer columns: $header"

# 4. The status subresource: spec changes do not touch status and vice versa.
k patch kvc demo --subresource=status --type=merge \
  -p '{"status":{"phase":"Running","shardCount":3,"ready":"6/6","selector":"app.kubernetes.io/instance=demo"}}' >/dev/null
[ "$(k get kvc demo -o jsonpath='{.status.phase}')" = Running ] && pass "status subresource" || fail "status subresource"
[ "$(k get kvc demo -o jsonpath='{.metadata.generation}')" = 1 ] && pass "status write keeps generation" || fail "status write bumped generation"

# 5. The scale subresource drives spec.shards.
k scale kvc demo --replicas=5 >/dev/null
[ "$(k get kvc demo -o jsonpath='{.spec.shards}')" = 5 ] && pass "scale subresource sets spec.shards" || fail "scale subresource"
[ "$(k get --raw /apis/kvcache.io/v1alpha1/namespaces/default/kvcaches/demo/scale | grep -o '"selector":"[^"]*"')" = '"selector":"app.kubernetes.io/instance=demo"' ] \
  && pass "scale selector" || fail "scale selector"

# 6. Bad resources are refused with clear messages.
bad() {  # bad NAME SPEC-YAML (indented 2)
  printf 'apiVersion: kvcache.io/v1alpha1\nkind: KVCache\nmetadata:\n  name: %s\nspec:\n%s\n' "$1" "$2"
}
bad zero-shards '  shards: 0' | expect_refused "shards 0" 'spec.shards: Invalid value: 0: spec.shards in body should be greater than or equal to 1'
bad many-shards '  shards: 1000' | expect_refused "shards 1000" 'spec.shards in body should be less than or equal to 128'
bad sync-acks $'  replicasPerShard: 1\n  replication: {mode: sync, minAcks: 2}' |
  expect_refused "sync minAcks > replicas" 'replication.mode sync needs replication.minAcks <= replicasPerShard'
bad sync-none $'  replicasPerShard: 0\n  replication: {mode: sync}' |
  expect_refused "sync without replicas" 'replication.mode sync needs'
bad bad-eviction '  memory: {eviction: random}' | expect_refused "eviction enum" 'supported values: "lru", "lfu", "noeviction"'
bad bad-limit '  memory: {limit: lots}' | expect_refused "memory.limit" 'spec.memory.limit in body should match'
bad bad-size '  storage: {size: big}' | expect_refused "storage.size" 'storage.size must be a positive quantity'
bad bad-pdb '  podDisruptionBudget: {maxUnavailable: 101}' |
  expect_refused "pdb maxUnavailable" 'maxUnavailable in body should be less than or equal to 100'
bad bad-field '  shardz: 3' | expect_refused "unknown field" 'unknown field "spec.shardz"'
bad bad-ingress '  ingress: {enabled: true}' | expect_refused "ingress without host" 'ingress.enabled needs ingress.host'
bad bad-nodeport '  service: {nodePort: 30080}' | expect_refused "nodePort on ClusterIP" 'service.nodePort is only valid'
bad bad-reclaim '  storage: {reclaimPolicy: Recycle}' | expect_refused "reclaimPolicy enum" 'supported values: "Keep", "Delete"'
bad bad-name-is-long-enough-to-break-pod-names-x '  shards: 1' | expect_refused "long name" 'metadata.name'

# 7. Transition rules: storage never shrinks, its class never changes; growing is fine.
bad demo $'  storage: {size: 512Mi}' | expect_refused "storage shrink" 'storage.size cannot shrink'
bad demo $'  storage: {size: 1Gi, storageClassName: fast}' | expect_refused "storageClassName change" 'storageClassName is immutable'
if k patch kvc demo --type=merge -p '{"spec":{"storage":{"size":"2Gi"}}}' >/dev/null; then
  pass "storage growth accepted"
else
  fail "storage growth refused"
fi

k delete kvc demo --wait=true >/dev/null
if [ "$failures" -ne 0 ]; then echo "$failures check(s) failed" >&2; exit 1; fi
echo "all CRD checks passed"
