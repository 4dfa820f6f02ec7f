#!/usr/bin/env bash
# Conformance suite of the local cluster (or of any cluster).
#
#   tests/localk8s/conformance/run.sh              # starts `localk8s up --nodes 3` (root), runs, stops, checks the host
#   KUBECONFIG=~/.kube/config tests/localk8s/conformance/run.sh   # an existing cluster: only runs the suite
#
# Environment: BIN_DIR (default build/bin: localk8s, kubectl), CONFORMANCE_IMAGE (default
# python:3.12-slim, mapped by localk8s to /usr/bin/python3), GO_TEST_FLAGS (e.g. "-run TestNodeClient"),
# CONFORMANCE_PARALLEL (default 8 tests at once),
# CONFORMANCE_KEEP_STATE=1 keeps the temporary state dir (logs) after a run.
# Exits non-zero if a test fails, localk8s fails to start or stop, or something is left on the host.
set -uo pipefail

start=$(date +%s)
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
BIN_DIR=${BIN_DIR:-$root/build/bin}
export CONFORMANCE_IMAGE=${CONFORMANCE_IMAGE:-python:3.12-slim}
export KUBECTL=${KUBECTL:-$BIN_DIR/kubectl}
GO_TEST_FLAGS=${GO_TEST_FLAGS:-}
PARALLEL=${CONFORMANCE_PARALLEL:-8}   # tests run in parallel (each in its own namespace); go test's default is GOMAXPROCS
fail=0
lk_pid=
state=

log() { echo "run.sh: $*"; }

stop_localk8s() {
  [ -n "$lk_pid" ] || return 0
  if kill -0 "$lk_pid" 2>/dev/null; then
    log "stopping localk8s (pid $lk_pid, SIGTERM)"
    kill -TERM "$lk_pid"
    wait "$lk_pid"
    local rc=$?
    log "localk8s exited with $rc"
    [ "$rc" -eq 0 ] || fail=1
  else
    wait "$lk_pid" 2>/dev/null
    log "localk8s had already exited"
    fail=1
  fi
  lk_pid=
}

check_host_clean() {
  local left=0
  if ip netns list 2>/dev/null | grep -q '^lk8s-'; then
    log "LEFT: netns $(ip netns list | grep '^lk8s-' | tr '\n' ' ')"; left=1
  fi
  if ip link show kvcbr0 >/dev/null 2>&1; then log "LEFT: bridge kvcbr0"; left=1; fi
  if ip route show 10.96.0.0/16 2>/dev/null | grep -q .; then log "LEFT: route 10.96.0.0/16"; left=1; fi
  if iptables -S LOCALK8S-FWD >/dev/null 2>&1; then log "LEFT: iptables chain LOCALK8S-FWD"; left=1; fi
  local ipt
  for ipt in iptables-save ip6tables-save; do
    if "$ipt" 2>/dev/null | grep -qiE 'KUBE-|localk8s|kvcbr0'; then
      log "LEFT: $ipt: $("$ipt" | grep -iE 'KUBE-|localk8s|kvcbr0' | head -5 | tr '\n' ' ')"; left=1
    fi
  done
  local fwd_now
  fwd_now=$(cat /proc/sys/net/ipv4/ip_forward)
  if [ "$fwd_now" != "$fwd_before" ]; then
    log "LEFT: net.ipv4.ip_forward is $fwd_now, was $fwd_before before localk8s"; left=1
  fi
  if [ -n "$state" ] && pgrep -f -- "$state" >/dev/null 2>&1; then
    log "LEFT: processes using $state: $(pgrep -f -- "$state" | tr '\n' ' ')"; left=1
  fi
  if [ "$left" -eq 0 ]; then
    log "host clean: no lk8s-* netns, no kvcbr0, no 10.96.0.0/16 route, no LOCALK8S-FWD/KUBE-* chains, no processes, ip_forward=$fwd_now as before"
  else
    fail=1
  fi
}

on_signal() { log "interrupted"; fail=1; stop_localk8s; exit 130; }
trap on_signal INT TERM

if [ -z "${KUBECONFIG:-}" ]; then
  [ "$(id -u)" -eq 0 ] || { log "localk8s needs root (or set KUBECONFIG to an existing cluster)"; exit 1; }
  [ -x "$BIN_DIR/localk8s" ] || { log "$BIN_DIR/localk8s missing: make localk8s"; exit 1; }
  if ip link show kvcbr0 >/dev/null 2>&1; then
    log "kvcbr0 exists: another localk8s runs in this network namespace; stop it or set KUBECONFIG"; exit 1
  fi
  fwd_before=$(cat /proc/sys/net/ipv4/ip_forward)
  state=$(mktemp -d /tmp/lk8s-conformance.XXXXXX)
  log "starting localk8s up --state-dir $state --nodes 3"
  "$BIN_DIR/localk8s" up --state-dir "$state" --nodes 3 --image "python=/usr/bin/python3" >"$state.up.log" 2>&1 &
  lk_pid=$!
  deadline=$(( $(date +%s) + 300 ))
  until grep -q '^export KUBECONFIG=' "$state.up.log" 2>/dev/null; do
    if ! kill -0 "$lk_pid" 2>/dev/null; then log "localk8s exited before it was ready:"; cat "$state.up.log"; lk_pid=; exit 1; fi
    if [ "$(date +%s)" -gt "$deadline" ]; then log "localk8s not ready in 300 s:"; cat "$state.up.log"; stop_localk8s; exit 1; fi
    sleep 0.2
  done
  eval "$(grep '^export KUBECONFIG=' "$state.up.log" | tail -1)"
  log "cluster ready after $(( $(date +%s) - start )) s: KUBECONFIG=$KUBECONFIG"
else
  log "using the existing cluster of KUBECONFIG=$KUBECONFIG"
fi

if [ ! -f "$here/node/node_modules/@kubernetes/client-node/package.json" ]; then
  log "npm ci (node/)"
  (cd "$here/node" && npm ci --no-audit --no-fund) || fail=1
fi

log "go test ./conformance"
suite_start=$(date +%s)
(cd "$here/.." && go test -count=1 -v -timeout 30m -parallel "$PARALLEL" $GO_TEST_FLAGS ./conformance) 2>&1 | tee "${state:-/tmp/lk8s-conformance}.test.log"
test_rc=${PIPESTATUS[0]}
log "suite finished in $(( $(date +%s) - suite_start )) s, go test exit code $test_rc"
[ "$test_rc" -eq 0 ] || fail=1

if [ -n "$lk_pid" ]; then
  stop_localk8s
  check_host_clean
  if [ "${CONFORMANCE_KEEP_STATE:-0}" = 1 ] || [ "$fail" -ne 0 ]; then
    log "state dir kept: $state (logs in $state/logs, launcher output $state.up.log)"
  else
    rm -rf "$state" "$state.up.log"
  fi
fi

echo
log "summary:"
grep -E '^\s*--- (PASS|FAIL|SKIP)' "${state:-/tmp/lk8s-conformance}.test.log" | sed 's/^/  /'
log "total time $(( $(date +%s) - start )) s; result: $([ "$fail" -eq 0 ] && echo PASS || echo FAIL)"
exit "$fail"
