#!/usr/bin/env bash
# Runs a command against a fresh localk8s, then stops it and checks that the host is clean.
#
#   tests/localk8s/with-localk8s.sh [--nodes N] [--image REPO=PROGRAM ...] -- COMMAND [ARG...]
#
# For tests of the tiers that need a real cluster (kube, e2e, chart, monitoring): register
# `with-localk8s.sh --nodes 3 -- pytest ...` with CTest. It holds /tmp/localk8s.lock for the
# whole run (only one localk8s per machine; runs from other worktrees wait), starts
# `localk8s up` on a temporary state dir, and runs COMMAND once the cluster is ready with
#   KUBECONFIG           the admin kubeconfig
#   LOCALK8S_STATE_DIR   the state dir (fault hooks: `localk8s restart --state-dir ...`)
#   LOCALK8S_BIN_DIR     where localk8s, kubectl and helm are
# Then SIGTERM, wait, and check: localk8s exited 0, no lk8s-* netns, no kvcbr0, no
# 10.96.0.0/16 route, no KUBE-*/LOCALK8S chain or rule, no process naming the state dir, and
# net.ipv4.ip_forward as before. Exit status: COMMAND's, or 1 if the cluster did not start or
# the host is not clean. The state dir (logs in DIR/logs) is kept on failure or with
# LOCALK8S_KEEP_STATE=1, removed otherwise.
#
# Environment: BIN_DIR (default build/bin of this checkout), LOCALK8S_READY_TIMEOUT (s, 300).
# Called under `flock /tmp/localk8s.lock ...` (a CTest command), it sees that flock among its
# ancestors and does not lock again (or set LOCALK8S_LOCK_HELD=/tmp/localk8s.lock).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
lock=/tmp/localk8s.lock
# Take the lock unless a caller holds it already: a second flock on the same file from below
# the holder would wait for ever (flock locks belong to the open file, not the process tree).
lock_held_above() {
  [ "${LOCALK8S_LOCK_HELD:-}" = "$lock" ] && return 0
  local p=$PPID
  while [ "${p:-0}" -gt 1 ]; do
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qE "(^|/)flock( -[a-zA-Z]+)* $lock " && return 0
    p=$(sed -E 's/^.*\) [A-Za-z] ([0-9]+) .*$/\1/' "/proc/$p/stat" 2>/dev/null)
  done
  return 1
}
if ! lock_held_above; then
  exec env LOCALK8S_LOCK_HELD="$lock" flock "$lock" bash "$0" "$@"
fi

BIN_DIR=$(cd "${BIN_DIR:-$root/build/bin}" && pwd) || exit 1
up_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) up_args+=(--nodes "$2"); shift 2 ;;
    --image) up_args+=(--image "$2"); shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 [--nodes N] [--image REPO=PROGRAM ...] -- COMMAND [ARG...]" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "with-localk8s.sh: no COMMAND" >&2; exit 2; }

log() { echo "with-localk8s: $*"; }
[ "$(id -u)" -eq 0 ] || { log "needs root (bridge, iptables, network namespaces)"; exit 1; }
[ -x "$BIN_DIR/localk8s" ] || { log "$BIN_DIR/localk8s missing: make build"; exit 1; }
if ip link show kvcbr0 >/dev/null 2>&1; then
  log "kvcbr0 exists although $lock is ours: a crashed localk8s? (localk8s down --state-dir DIR)"; exit 1
fi

fwd_before=$(cat /proc/sys/net/ipv4/ip_forward)
state=$(mktemp -d /tmp/lk8s-run.XXXXXX)
uplog="$state.up.log"
rc=0
lk_pid=

stop_localk8s() {
  [ -n "$lk_pid" ] || return 0
  if kill -0 "$lk_pid" 2>/dev/null; then
    kill -TERM "$lk_pid"
    wait "$lk_pid"
    local s=$?
    [ "$s" -eq 0 ] || { log "localk8s exited with $s (output: $uplog)"; rc=1; }
  else
    wait "$lk_pid" 2>/dev/null
    log "localk8s had exited on its own (output: $uplog)"; rc=1
  fi
  lk_pid=
}

check_host_clean() {
  local left=()
  ip netns list 2>/dev/null | grep -q '^lk8s-' && left+=("netns: $(ip netns list | grep '^lk8s-' | tr '\n' ' ')")
  ip link show kvcbr0 >/dev/null 2>&1 && left+=("bridge kvcbr0")
  ip route show 10.96.0.0/16 2>/dev/null | grep -q . && left+=("route 10.96.0.0/16")
  local ipt
  for ipt in iptables-save ip6tables-save; do
    "$ipt" 2>/dev/null | grep -qiE 'KUBE-|localk8s|kvcbr0' &&
      left+=("$ipt: $("$ipt" | grep -iE 'KUBE-|localk8s|kvcbr0' | head -3 | tr '\n' ' ')")
  done
  pgrep -f -- "$state" >/dev/null 2>&1 && left+=("processes: $(pgrep -f -- "$state" | tr '\n' ' ')")
  local fwd_now
  fwd_now=$(cat /proc/sys/net/ipv4/ip_forward)
  [ "$fwd_now" = "$fwd_before" ] || left+=("net.ipv4.ip_forward is $fwd_now, was $fwd_before")
  if [ ${#left[@]} -gt 0 ]; then
    local l
    for l in "${left[@]}"; do log "LEFT on the host: $l"; done
    rc=1
  fi
}

trap 'log "interrupted"; stop_localk8s; exit 130' INT TERM

log "localk8s up --state-dir $state ${up_args[*]}"
"$BIN_DIR/localk8s" up --state-dir "$state" "${up_args[@]}" >"$uplog" 2>&1 &
lk_pid=$!
deadline=$(( $(date +%s) + ${LOCALK8S_READY_TIMEOUT:-300} ))
until grep -q '^export KUBECONFIG=' "$uplog" 2>/dev/null; do
  if ! kill -0 "$lk_pid" 2>/dev/null; then
    wait "$lk_pid"; lk_pid=
    log "localk8s exited before it was ready:"; cat "$uplog"; exit 1
  fi
  if [ "$(date +%s)" -gt "$deadline" ]; then
    log "localk8s not ready in ${LOCALK8S_READY_TIMEOUT:-300} s:"; cat "$uplog"; stop_localk8s; exit 1
  fi
  sleep 0.2
done
export KUBECONFIG="$state/kubeconfig" LOCALK8S_STATE_DIR="$state" LOCALK8S_BIN_DIR="$BIN_DIR"
log "ready ($(grep -o 'cluster ready in [0-9.]*s' "$uplog")): KUBECONFIG=$KUBECONFIG"

"$@"
rc=$?
[ "$rc" -eq 0 ] || log "command exited with $rc"

stop_localk8s
check_host_clean
if [ "$rc" -ne 0 ] || [ "${LOCALK8S_KEEP_STATE:-0}" = 1 ]; then
  log "state dir kept: $state (logs in $state/logs, launcher output $uplog)"
else
  rm -rf "$state" "$uplog"
  log "stopped, host clean"
fi
exit "$rc"
