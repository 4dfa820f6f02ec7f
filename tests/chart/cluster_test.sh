#!/usr/bin/env bash
# The chart against the real Kubernetes of localk8s: starts a cluster, runs
# test_chart_cluster.py (server-side dry-run of every ci/ render, helm install/test/upgrade/
# rollback/uninstall, curl through an Ingress served by traefik), stops the cluster and checks
# that no lk8s-* netns remains.
#
# Usage: cluster_test.sh REPO_ROOT [BIN_DIR] [pytest args...]
# BIN_DIR (or $LOCALK8S_BIN_DIR) holds localk8s, kubectl, helm, traefik and, once built,
# kvcache-operator. Exits 77 (skipped) when not root or localk8s is missing. Holds
# /tmp/localk8s.lock for the whole run (one localk8s per machine).
# CHART_REQUIRE_OPERATOR=1 turns "operator binary missing" from a skip into a failure;
# CHART_REQUIRE_TRAEFIK=1 the same for traefik (the curl-via-ingress steps).
# CHART_OPERATOR_STANDIN=1 (development only) runs operator_standin.py as the operator, so
# the install --wait / probes / helm test steps run before the operator exists.
set -euo pipefail

repo=$(cd "${1:?usage: cluster_test.sh REPO_ROOT [BIN_DIR] [pytest args]}" && pwd)
bin=$(cd "${LOCALK8S_BIN_DIR:-${2:-$repo/build/bin}}" && pwd)
shift $(( $# >= 2 ? 2 : 1 ))

if [ "$(id -u)" != 0 ]; then echo "SKIP: localk8s needs root"; exit 77; fi
for tool in localk8s kubectl helm kube-apiserver etcd; do
  if [ ! -x "$bin/$tool" ]; then echo "SKIP: $bin/$tool missing (make localk8s)"; exit 77; fi
done
if [ -z "${KVCACHE_LOCALK8S_LOCKED:-}" ]; then
  exec env KVCACHE_LOCALK8S_LOCKED=1 flock /tmp/localk8s.lock "$0" "$repo" "$bin" "$@"
fi

state=$(mktemp -d /tmp/kvc-chart-test.XXXXXX)
log=$state/localk8s.log
lk_pid=

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
  else
    echo "host clean: no lk8s-* netns"
  fi
  if [ "$rc" != 0 ] && [ -d "$state/logs" ]; then
    echo "--- last lines of the launcher log" >&2; tail -20 "$state/logs/launcher.log" >&2 || true
  fi
  rm -rf "$state"
  exit $rc
}
trap cleanup EXIT

# Two nodes: the operator, its helm test pod, the ingress controller and a one-node KVCache.
# localk8s maps an image to a program: the helm test image (curlimages/curl) runs the host's
# curl, the ingress controller's (docker.io/library/traefik, ingress/traefik.yaml) the traefik
# that tests/localk8s/upstream/build.sh builds into BIN_DIR (the kvcache images are mapped
# to BIN_DIR by default).
images=(--image curlimages/curl=/usr/bin/curl --image "traefik=$bin/traefik")
if [ "${CHART_OPERATOR_STANDIN:-}" = 1 ]; then
  # Development only: an HTTP stand-in plays the operator (operator_standin.py).
  images+=(--image "kvcache/kvcache-operator=$repo/tests/chart/operator_standin.py")
  export CHART_OPERATOR_STANDIN
  echo "CHART_OPERATOR_STANDIN=1: the operator image runs tests/chart/operator_standin.py"
fi
start=$(date +%s)
"$bin/localk8s" up --state-dir "$state" --nodes 2 --bin-dir "$bin" "${images[@]}" >"$log" 2>&1 &
lk_pid=$!
for _ in $(seq 600); do
  if grep -q '^export KUBECONFIG=' "$log"; then break; fi
  if ! kill -0 "$lk_pid" 2>/dev/null; then cat "$log" >&2; echo "FAIL: localk8s exited" >&2; exit 1; fi
  sleep 0.5
done
grep -q '^export KUBECONFIG=' "$log" || { tail -30 "$log" >&2; echo "FAIL: localk8s not ready in 5 min" >&2; exit 1; }
echo "localk8s ready in $(( $(date +%s) - start )) s"

export KUBECONFIG=$state/kubeconfig KUBECTL=$bin/kubectl HELM=$bin/helm LOCALK8S_BIN_DIR=$bin
export LOCALK8S_STATE_DIR=$state
cd "$repo/tests/chart"
/usr/bin/python3 -m pytest -v -rs -p no:cacheprovider test_chart_cluster.py "$@"
