#!/usr/bin/env bash
# Builds the container images without a Docker engine or a registry:
#   1. debootstrap a minimal Debian bookworm rootfs from the Debian archive this machine uses,
#   2. `podman import` it as localhost/debian:bookworm-kvcache (the pinned base of both
#      Dockerfiles; skipped when that image exists, REBUILD_BASE=1 forces it),
#   3. `buildah bud` cache-node/Dockerfile and operator/Dockerfile (the latter only once the
#      operator has a kvcache-operator target), tagged localhost/kvcache/<name>:<version>,
#   4. print the image sizes.
#
#   images/build.sh [node|operator|base]...     # default: base node operator
# Needs root, debootstrap, podman and buildah (apt-get installs them when missing).
# Environment: DEBIAN_MIRROR (default: the first bookworm URI in /etc/apt), WORK_DIR
# (default build/images), TAG (default the project version), BUILDAH_ISOLATION (default chroot:
# crun cannot create cgroups in this machine's hybrid hierarchy), EXTRA_CA_FILE (default the host's
# /etc/ssl/certs/ca-certificates.crt, given to the builder as the build secret extra_ca).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
BASE=localhost/debian:bookworm-kvcache
TAG=${TAG:-$(sed -n 's/^project(kvcache VERSION \([0-9.]*\).*/\1/p' "$repo/CMakeLists.txt")}
WORK_DIR=${WORK_DIR:-$repo/build/images}
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(base node operator)

log() { echo "images/build.sh: $*"; }

[ "$(id -u)" = 0 ] || { log "needs root (debootstrap, podman import)"; exit 1; }

need=()
for pkg in debootstrap podman buildah; do
  dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed' || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/* |
        grep -v security | sed -E 's/^URIs: *//; s/^deb +(\[[^]]*\] +)?//; s/ .*//' | head -1)
  echo "${uri:-http://deb.debian.org/debian}"
}

build_base() {
  if podman image exists "$BASE" && [ "${REBUILD_BASE:-}" != 1 ]; then
    log "$BASE exists (REBUILD_BASE=1 rebuilds it)"; return
  fi
  local rootfs=$WORK_DIR/rootfs m
  m=$(mirror)
  rm -rf "$rootfs"; mkdir -p "$WORK_DIR"
  log "debootstrap --variant=minbase bookworm from $m"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$m"
  # Same archive inside the image, trimmed like the official slim image.
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s-security bookworm-security main\n' \
    "$m" "$m" "${m%/debian}/debian" > "$rootfs/etc/apt/sources.list"
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* \
         "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log
  log "podman import -> $BASE"
  tar -C "$rootfs" --numeric-owner -c . |
    podman import --change 'CMD ["/bin/bash"]' --message "debootstrap bookworm minbase" - "$BASE"
  rm -rf "$rootfs"
}

build_image() {  # build_image NAME DOCKERFILE
  local name=$1 dockerfile=$2 start
  start=$(date +%s)
  log "buildah bud $dockerfile -> localhost/kvcache/$name:$TAG"
  # The host's trust store as the build's extra CA (npm behind a TLS-inspecting proxy).
  buildah bud --secret "id=extra_ca,src=${EXTRA_CA_FILE:-/etc/ssl/certs/ca-certificates.crt}" --layers --format docker --network host --ignorefile "$repo/images/dockerignore" --build-arg "BASE=$BASE" \
    -f "$repo/$dockerfile" -t "localhost/kvcache/$name:$TAG" "$repo"
  log "$name built in $(( $(date +%s) - start )) s"
}

for t in "${targets[@]}"; do
  case $t in
    base) build_base ;;
    node) build_image kvcache-node cache-node/Dockerfile ;;
    operator)
      if [ -f "$repo/operator/main.cc" ]; then
        build_image kvcache-operator operator/Dockerfile
      else
        log "SKIP operator: operator/main.cc (the kvcache-operator binary) does not exist yet"
      fi ;;
    *) log "unknown target $t (base, node, operator)"; exit 2 ;;
  esac
done

log "images:"
podman images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' |
  grep -E "^(localhost/debian:bookworm-kvcache|localhost/kvcache/)" | sed 's/^/  /'
