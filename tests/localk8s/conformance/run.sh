#!/usr/bin/env bash
# Conformance suite of the local cluster (or of any cluster).
#
#   tests/localk8s/conformance/run.sh              # root: a fresh `localk8s up --nodes 3` (through
#                                                  # ../with-localk8s.sh: /tmp/localk8s.lock held,
#                                                  # host checked clean afterwards), then the suite
#   KUBECONFIG=~/.kube/config tests/localk8s/conformance/run.sh   # an existing cluster: only the suite
#
# Environment: BIN_DIR (default build/bin: localk8s, kubectl), CONFORMANCE_IMAGE (default
# python:3.12-slim, mapped by localk8s to /usr/bin/python3), GO_TEST_FLAGS (e.g. "-run TestNodeClient"),
# CONFORMANCE_PARALLEL (default 8 tests at once),
# CONFORMANCE_KEEP_STATE=1 keeps the temporary state dir (logs) after a run (kept on failure anyway).
# Exits non-zero if a test fails, localk8s fails to start or stop, or something is left on the host.
set -uo pipefail

start=$(date +%s)
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
export BIN_DIR=${BIN_DIR:-$root/build/bin}
export CONFORMANCE_IMAGE=${CONFORMANCE_IMAGE:-python:3.12-slim}
export KUBECTL=${KUBECTL:-$BIN_DIR/kubectl}
GO_TEST_FLAGS=${GO_TEST_FLAGS:-}
PARALLEL=${CONFORMANCE_PARALLEL:-8}   # tests run in parallel (each in its own namespace); go test's default is GOMAXPROCS

log() { echo "run.sh: $*"; }

if [ -z "${KUBECONFIG:-}" ]; then
  [ "${CONFORMANCE_KEEP_STATE:-0}" = 1 ] && export LOCALK8S_KEEP_STATE=1
  exec "$here/../with-localk8s.sh" --nodes 3 --image "python=/usr/bin/python3" -- bash "$0" "$@"
fi
log "cluster of KUBECONFIG=$KUBECONFIG"

fail=0
if [ ! -f "$here/node/node_modules/@kubernetes/client-node/package.json" ]; then
  log "npm ci (node/)"
  (cd "$here/node" && npm ci --no-audit --no-fund) || fail=1
fi

log "go test ./conformance"
out=$(mktemp /tmp/lk8s-conformance.XXXXXX.log)
(cd "$here/.." && go test -count=1 -v -timeout 30m -parallel "$PARALLEL" $GO_TEST_FLAGS ./conformance) 2>&1 | tee "$out"
test_rc=${PIPESTATUS[0]}
log "go test exit code $test_rc"
[ "$test_rc" -eq 0 ] || fail=1

echo
log "summary:"
grep -E '^\s*--- (PASS|FAIL|SKIP)' "$out" | sed 's/^/  /'
rm -f "$out"
log "suite time $(( $(date +%s) - start )) s; result: $([ "$fail" -eq 0 ] && echo PASS || echo FAIL)"
exit "$fail"
