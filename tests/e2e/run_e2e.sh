#!/usr/bin/env bash
# Runs the pytest e2e tests (test_*.py here) against one localk8s cluster they start
# themselves (conftest.py), holding /tmp/localk8s.lock: only one localk8s per machine.
#
# Usage: run_e2e.sh REPO_ROOT BUILD_BIN_DIR [pytest args...]
# kvcache-node / kvcache-operator come from BUILD_BIN_DIR; localk8s, kubectl, helm and the
# control plane from $LOCALK8S_BIN_DIR (default BUILD_BIN_DIR). Exits 77 (skipped) when not
# root or a binary is missing. Default selection: every test not marked slow.
set -euo pipefail

repo=$(cd "${1:?usage: run_e2e.sh REPO_ROOT BUILD_BIN_DIR [pytest args]}" && pwd)
own_bin=$(cd "${2:?usage: run_e2e.sh REPO_ROOT BUILD_BIN_DIR [pytest args]}" && pwd)
shift 2
bin=${LOCALK8S_BIN_DIR:-$own_bin}

if [ "$(id -u)" != 0 ]; then echo "SKIP: localk8s needs root"; exit 77; fi
for tool in "$bin/localk8s" "$bin/kubectl" "$bin/helm" "$bin/kube-apiserver" \
            "$own_bin/kvcache-node" "$own_bin/kvcache-operator"; do
  if [ ! -x "$tool" ]; then echo "SKIP: $tool missing (make build; make localk8s)"; exit 77; fi
done
# CTest runs this under `flock /tmp/localk8s.lock env LOCALK8S_LOCK_HELD=/tmp/localk8s.lock`;
# run by hand it takes the lock itself (never twice: a second flock below the holder waits
# for ever).
if [ "${LOCALK8S_LOCK_HELD:-}" != /tmp/localk8s.lock ]; then
  exec env LOCALK8S_LOCK_HELD=/tmp/localk8s.lock flock /tmp/localk8s.lock "$0" "$repo" "$own_bin" "$@"
fi

export KVCACHE_BIN_DIR=$own_bin LOCALK8S_BIN_DIR=$bin
cd "$repo/tests/e2e"
if [ $# = 0 ]; then set -- -m "not slow"; fi
exec /usr/bin/python3 -m pytest -v -s -rs -p no:cacheprovider "$@"
