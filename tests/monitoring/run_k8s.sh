#!/usr/bin/env bash
# Runs test_prometheus_k8s.py against a fresh localk8s (tests/localk8s/with-localk8s.sh: holds
# /tmp/localk8s.lock, starts the cluster, stops it and checks that the host is clean).
#
# Usage: run_k8s.sh BIN_DIR [pytest args...]
# BIN_DIR holds localk8s, kubectl, helm, the control plane, kvcache-node and kvcache-operator
# (localk8s maps the kvcache images to the last two) and prometheus (built by
# tests/localk8s/upstream/build.sh with the Kubernetes service discovery, which Debian's
# package leaves out; PROMETHEUS_BIN overrides). Exits 77 (skipped) when not root or a binary
# is missing, like the e2e tier.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=$(cd "${1:?usage: run_k8s.sh BIN_DIR [pytest args]}" && pwd)
shift

if [ "$(id -u)" != 0 ]; then echo "SKIP: localk8s needs root"; exit 77; fi
export PROMETHEUS_BIN=${PROMETHEUS_BIN:-$bin/prometheus}
for tool in "$bin/localk8s" "$bin/kubectl" "$bin/helm" "$bin/kube-apiserver" \
            "$bin/kvcache-node" "$bin/kvcache-operator" "$PROMETHEUS_BIN"; do
  if [ ! -x "$tool" ]; then echo "SKIP: $tool missing (make build)"; exit 77; fi
done

cd "$here"
# Two agent nodes hold the operator and the 4 node pods.
exec env BIN_DIR="$bin" KVCACHE_BIN_DIR="$bin" "$here/../localk8s/with-localk8s.sh" --nodes 2 -- \
  /usr/bin/python3 -m pytest -q -p no:cacheprovider -rs --durations=5 test_prometheus_k8s.py "$@"
