#!/usr/bin/env bash
# Integration tests of operator/kube against a real API server (localk8s, --nodes 0).
#
#   tests/kube/run.sh BIN_DIR [gtest args...]
#
# BIN_DIR holds kube_integration_test and kube_elector; localk8s and kubectl come from
# LOCALK8S_BIN_DIR (default: BIN_DIR, else /work/main/build/bin). Holds /tmp/localk8s.lock for
# the whole run (one localk8s per machine), brings the cluster down and checks that no lk8s-*
# netns or kvcbr0 bridge is left. KUBE_TEST_KEEP_STATE=1 keeps the state dir (logs).
set -uo pipefail

# Take the lock unless the caller holds it already (flock would wait for itself).
if [ -z "${KUBE_TEST_LOCKED:-}" ] && [ "${LOCALK8S_LOCK_HELD:-}" != /tmp/localk8s.lock ]; then
  KUBE_TEST_LOCKED=1 exec flock /tmp/localk8s.lock "$0" "$@"
fi

BIN_DIR=$(cd "${1:?usage: run.sh BIN_DIR}" && pwd)
shift
if [ -z "${LOCALK8S_BIN_DIR:-}" ]; then
  if [ -x "$BIN_DIR/localk8s" ]; then LOCALK8S_BIN_DIR=$BIN_DIR; else LOCALK8S_BIN_DIR=/work/main/build/bin; fi
fi
LK=$LOCALK8S_BIN_DIR/localk8s
[ -x "$LK" ] || { echo "run.sh: $LK missing (make localk8s)"; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "run.sh: localk8s needs root"; exit 1; }
if ip link show kvcbr0 >/dev/null 2>&1; then
  echo "run.sh: kvcbr0 exists: a localk8s not started under the lock is running"; exit 1
fi

state=$(mktemp -d /tmp/lk8s-kube.XXXXXX)
fail=0
lk_pid=
stop_localk8s() {
  [ -n "$lk_pid" ] || return 0
  kill -TERM "$lk_pid" 2>/dev/null
  wait "$lk_pid"; local rc=$?
  [ "$rc" -eq 0 ] || { echo "run.sh: localk8s exited with $rc"; fail=1; }
  lk_pid=
}
trap 'stop_localk8s; exit 130' INT TERM

echo "run.sh: localk8s up --state-dir $state --nodes 0"
"$LK" up --state-dir "$state" --nodes 0 >"$state.up.log" 2>&1 &
lk_pid=$!
deadline=$(( $(date +%s) + 300 ))
until grep -q '^export KUBECONFIG=' "$state.up.log" 2>/dev/null; do
  if ! kill -0 "$lk_pid" 2>/dev/null; then echo "run.sh: localk8s exited:"; cat "$state.up.log"; exit 1; fi
  if [ "$(date +%s)" -gt "$deadline" ]; then echo "run.sh: not ready in 300 s"; stop_localk8s; exit 1; fi
  sleep 1
done
echo "run.sh: cluster ready after $(( $(date +%s) - deadline + 300 )) s"

KUBECONFIG=$state/kubeconfig LOCALK8S_STATE_DIR=$state LOCALK8S=$LK \
  KUBECTL=$LOCALK8S_BIN_DIR/kubectl KUBE_ELECTOR=$BIN_DIR/kube_elector \
  "$BIN_DIR/kube_integration_test" "$@" || fail=1

stop_localk8s
if ip netns list 2>/dev/null | grep -q '^lk8s-'; then echo "run.sh: LEFT netns"; fail=1; fi
if ip link show kvcbr0 >/dev/null 2>&1; then echo "run.sh: LEFT bridge kvcbr0"; fail=1; fi
if [ -n "${KUBE_TEST_KEEP_STATE:-}" ]; then
  echo "run.sh: state kept in $state"
else
  rm -rf "$state" "$state.up.log"
fi
[ "$fail" -eq 0 ] && echo "run.sh: PASS" || echo "run.sh: FAIL"
exit "$fail"
