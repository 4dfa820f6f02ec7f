#!/usr/bin/env bash
# Local mode (`make run`, DESIGN.md §10): a real Kubernetes on this machine (localk8s, 3 nodes)
# running the operator installed by its Helm chart and the sample KVCache (3 shards x 1
# replica) with real kvcache-node pods. Prints the lines to use it, then stays in the
# foreground until Ctrl-C, which stops everything it started and checks the host is clean.
#
# Usage: local_mode.sh BUILD_BIN_DIR [STATE_DIR]
# Builds nothing (make builds first). kvcache-node / kvcache-operator come from BUILD_BIN_DIR;
# localk8s, kubectl, helm and the control plane from $LOCALK8S_BIN_DIR (default BUILD_BIN_DIR).
# STATE_DIR (default BUILD_BIN_DIR/../localk8s-state) keeps the cluster's objects and volumes
# between runs (delete it to start afresh). Needs root. Holds /tmp/localk8s.lock while up.
set -euo pipefail

own_bin=$(cd "${1:?usage: local_mode.sh BUILD_BIN_DIR [STATE_DIR]}" && pwd)
bin=$(cd "${LOCALK8S_BIN_DIR:-$own_bin}" && pwd)
state=${2:-$own_bin/../localk8s-state}
repo=$(cd "$(dirname "$0")/../.." && pwd)
ns=default
name=demo

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
die() { printf 'local mode: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "localk8s needs root (network namespaces, iptables): run as root"
for tool in "$bin/localk8s" "$bin/kubectl" "$bin/helm" "$bin/kube-apiserver" \
            "$own_bin/kvcache-node" "$own_bin/kvcache-operator"; do
  [ -x "$tool" ] || die "$tool is missing: make build (and make localk8s for the upstream binaries)"
done
# The lock on fd 9 of this very process (no flock wrapper process: Ctrl-C must reach only this
# script, so that make waits until the cleanup is done). localk8s inherits it.
if [ "${LOCALK8S_LOCK_HELD:-}" != /tmp/localk8s.lock ]; then
  exec 9>>/tmp/localk8s.lock
  if ! flock -n 9; then
    say "another localk8s holds /tmp/localk8s.lock (only one per machine); waiting for it..."
    flock 9
  fi
fi

mkdir -p "$state"
state=$(cd "$state" && pwd)
export KUBECONFIG=$state/kubeconfig
k() { "$bin/kubectl" "$@"; }
lk_pid=

stop_cluster() {
  trap - INT TERM EXIT
  set +e
  if [ -n "$lk_pid" ] && kill -0 "$lk_pid" 2>/dev/null; then
    say "stopping localk8s (pods, control plane, host changes)..."
    kill -INT "$lk_pid"
    for i in $(seq 240); do
      kill -0 "$lk_pid" 2>/dev/null || break
      if [ $((i % 10)) = 0 ]; then echo "    still stopping ($((i / 2))s): $(tail -1 "$state/localk8s.log")"; fi
      sleep 0.5
    done
    if kill -0 "$lk_pid" 2>/dev/null; then
      echo "    localk8s did not stop in 2 minutes: SIGKILL and localk8s down"
      kill -KILL "$lk_pid"; "$bin/localk8s" down --state-dir "$state"
    fi
    wait "$lk_pid" 2>/dev/null
  fi
  if ip netns list | grep -q '^lk8s-'; then
    echo "lk8s-* network namespaces left: running localk8s down" >&2
    "$bin/localk8s" down --state-dir "$state"
  fi
  if ip netns list | grep -q '^lk8s-' || ip link show kvcbr0 >/dev/null 2>&1; then
    die "the host is not clean (lk8s-* netns or kvcbr0 left): see $state/logs"
  fi
  say "stopped; host clean (no lk8s-* netns, no kvcbr0). Objects and volumes stay in $state"
  exit "${1:-0}"
}
trap 'stop_cluster 0' INT TERM
trap 'rc=$?; [ $rc = 0 ] || echo "local mode failed (exit $rc); logs in $state" >&2; stop_cluster $rc' EXIT

# 1. localk8s, in its own session so that Ctrl-C reaches only this script, which stops it.
say "starting localk8s (3 nodes; state in $state; log $state/localk8s.log)"
start=$(date +%s)
rm -f "$state/kubeconfig"
setsid "$bin/localk8s" up --state-dir "$state" --nodes 3 --bin-dir "$bin" \
  --image "kvcache/kvcache-node=$own_bin/kvcache-node" \
  --image "kvcache/kvcache-operator=$own_bin/kvcache-operator" >"$state/localk8s.log" 2>&1 &
lk_pid=$!
last=
until grep -q '^export KUBECONFIG=' "$state/localk8s.log"; do
  kill -0 "$lk_pid" 2>/dev/null || { tail -20 "$state/localk8s.log" >&2; die "localk8s exited"; }
  line=$(tail -1 "$state/localk8s.log" | cut -c1-150)
  if [ -n "$line" ] && [ "$line" != "$last" ]; then echo "    $line"; last=$line; fi
  [ $(( $(date +%s) - start )) -lt 300 ] || die "localk8s not ready after 5 minutes"
  sleep 0.5
done
say "localk8s ready in $(( $(date +%s) - start ))s"

# 2. The operator, from the chart (upgrade --install: a second run reuses the release).
say "helm install kvcache-operator (charts/kvcache-operator, namespace kvcache-system)"
"$bin/helm" upgrade --install kvcache-operator "$repo/charts/kvcache-operator" \
  --namespace kvcache-system --create-namespace >/dev/null
k -n kvcache-system rollout status deployment/kvcache-operator --timeout=300s | sed 's/^/    /'

# 3. The sample, its client Service also a NodePort (reachable on 127.0.0.1).
say "kubectl apply crds/samples/kvcache-sample.yaml (3 shards x 1 replica; Service type NodePort)"
/usr/bin/python3 - "$repo/crds/samples/kvcache-sample.yaml" <<'EOF' | k apply -n "$ns" -f - | sed 's/^/    /'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
doc["spec"].setdefault("service", {})["type"] = "NodePort"
print(yaml.safe_dump(doc))
EOF
start=$(date +%s)
last=
while :; do
  kvc=$(k get kvc "$name" -n "$ns" -o json 2>/dev/null || echo '{}')
  line=$(/usr/bin/python3 -c '
import json, sys
k = json.loads(sys.argv[1]); st = k.get("status") or {}
c = {x["type"]: x for x in st.get("conditions", [])}
a = c.get("Available", {})
gen = k.get("metadata", {}).get("generation")
ok = a.get("status") == "True" and st.get("observedGeneration") == gen
print(("OK " if ok else "") + "phase=%s ready=%s %s" % (st.get("phase"), st.get("ready"),
      " ".join("%s=%s/%s" % (t, x["status"], x.get("reason", "")) for t, x in c.items())))
' "$kvc")
  if [ "$line" != "$last" ]; then echo "    [$(( $(date +%s) - start ))s] ${line#OK }"; last=$line; fi
  case "$line" in OK*) break ;; esac
  kill -0 "$lk_pid" 2>/dev/null || die "localk8s exited"
  [ $(( $(date +%s) - start )) -lt 600 ] || die "KVCache $name not Available after 10 minutes"
  sleep 1
done
say "KVCache $name Available in $(( $(date +%s) - start ))s"

# 4. Check both ways in from the host before printing them.
ip=$(k get svc "$name" -n "$ns" -o jsonpath='{.spec.clusterIP}')
port=$(k get svc "$name" -n "$ns" -o jsonpath='{.spec.ports[0].port}')
nodeport=$(k get svc "$name" -n "$ns" -o jsonpath='{.spec.ports[0].nodePort}')
# (Retried for a minute: on a reused state dir the status read first may still be the last
# run's while the restarted pods come up.)
for i in $(seq 120); do
  if curl -sf -m 5 -X PUT --data-binary 'hello from the ClusterIP' "http://$ip:$port/v1/greeting" >/dev/null \
     && [ "$(curl -sf -m 5 "http://$ip:$port/v1/greeting")" = 'hello from the ClusterIP' ]; then
    break
  fi
  [ "$i" -lt 120 ] || die "PUT/GET through the ClusterIP $ip:$port failed for a minute"
  sleep 0.5
done
nodeport_ok=
if [ -n "$nodeport" ] && curl -sf -m 5 "http://127.0.0.1:$nodeport/v1/greeting" >/dev/null; then
  nodeport_ok=1
fi

cat <<EOF

kvcache is running in localk8s: KVCache "$name" (3 shards x 1 replica) in namespace "$ns",
operator in "kvcache-system". From another shell:

  export KUBECONFIG=$KUBECONFIG
  export PATH=$bin:\$PATH          # kubectl and helm built for this cluster

Through the Service's ClusterIP ($ip, routed to the cluster from this host):
  curl -i -X PUT --data-binary 'hello' http://$ip:$port/v1/greeting
  curl -i http://$ip:$port/v1/greeting
  curl -s 'http://$ip:$port/v1?prefix=g'          # cluster-wide listing
EOF
if [ -n "$nodeport_ok" ]; then
  cat <<EOF

Through the NodePort on 127.0.0.1:
  curl -i -X PUT --data-binary 'hello' http://127.0.0.1:$nodeport/v1/greeting
  curl -i http://127.0.0.1:$nodeport/v1/greeting
EOF
else
  cat <<EOF

The NodePort $nodeport did not answer on 127.0.0.1 (use the ClusterIP lines above).
EOF
fi
cat <<EOF

With kubectl:
  kubectl get kvc $name                  # SHARDS REPLICAS READY PHASE
  kubectl describe kvc $name             # conditions, per-shard primaries, events
  kubectl get pods,sts,svc,pvc -l app.kubernetes.io/instance=$name -o wide
  kubectl patch kvc $name --type=merge -p '{"spec":{"shards":4}}'    # reshard
  kubectl -n kvcache-system logs deployment/kvcache-operator -f

Logs of the control plane and the nodes: $state/logs. Ctrl-C stops everything.
EOF

# 5. Foreground until Ctrl-C (or localk8s exits on its own).
wait "$lk_pid" || true
lk_pid=
die "localk8s exited unexpectedly (see $state/localk8s.log)"
