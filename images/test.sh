#!/usr/bin/env bash
# Runs the node image built by images/build.sh with podman and expects 200 from /healthz, a
# PUT/GET round trip, a non-root process and a healthy HEALTHCHECK; removes the container.
#   images/test.sh [IMAGE]     # default localhost/kvcache/kvcache-node:<project version>
# Needs root, podman and runc (installed when missing). The --ulimit flags are required on these machines (DEPS-NOTES:
# podman cannot raise rlimits past the hard limits otherwise).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
TAG=${TAG:-$(sed -n 's/^project(kvcache VERSION \([0-9.]*\).*/\1/p' "$repo/CMakeLists.txt")}
image=${1:-localhost/kvcache/kvcache-node:$TAG}
name=kvcache-node-test-$$
fail=0

log() { echo "images/test.sh: $*"; }
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*" >&2; fail=1; }

# crun (podman's default) refuses this machine's hybrid cgroup hierarchy ("cgroups in hybrid
# mode not supported"); runc with the cgroupfs manager runs the image. No systemd here, so
# podman logs that it cannot add healthcheck timers: `podman healthcheck run` below runs it.
if ! command -v runc >/dev/null; then
  log "installing runc"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends runc >/dev/null
fi
podman() { command podman --runtime runc --cgroup-manager cgroupfs "$@"; }

podman image exists "$image" || { log "$image missing: run images/build.sh"; exit 1; }
cleanup() { podman rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT

# Host network, port 0 is not possible for a fixed-port image: pick a free loopback port.
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
podman run -d --name "$name" --network host \
  --ulimit nofile=4096:4096 --ulimit nproc=1024:1024 \
  -e KVCACHE_LISTEN="127.0.0.1:$port" "$image" >/dev/null
log "started $image as $name on 127.0.0.1:$port"

code=000
for _ in $(seq 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/healthz" || true)
  [ "$code" = 200 ] && break
  [ "$(podman inspect -f '{{.State.Running}}' "$name")" = true ] || break
  sleep 0.2
done
[ "$code" = 200 ] && ok "GET /healthz -> 200" || { bad "GET /healthz -> $code"; podman logs "$name" | tail -20 >&2; }

put=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary hello "http://127.0.0.1:$port/v1/greeting")
got=$(curl -s "http://127.0.0.1:$port/v1/greeting")
[ "$put" = 201 ] && [ "$got" = hello ] && ok "PUT 201, GET hello (data under /data)" || bad "PUT $put GET '$got'"

uid=$(podman exec "$name" sh -c 'id -u')
[ "$uid" = 65532 ] && ok "runs as uid 65532" || bad "runs as uid $uid"

# The image's HEALTHCHECK (docker format) as podman runs it.
if podman healthcheck run "$name" >/dev/null 2>&1; then ok "HEALTHCHECK healthy"; else bad "HEALTHCHECK unhealthy"; fi

size=$(podman image inspect -f '{{.Size}}' "$image")
log "image size $((size / 1024 / 1024)) MiB ($size bytes)"
[ "$fail" = 0 ] && log "all checks passed" || exit 1
