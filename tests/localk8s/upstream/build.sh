#!/usr/bin/env bash
# Builds the upstream binaries localk8s runs (etcd, the Kubernetes control plane,
# kubectl, helm, CoreDNS), the Prometheus tests/monitoring runs against it, and the ingress
# controller the chart test runs in it (traefik), from the Go modules pinned in the go.mod
# beside each family directory here.
#
#   tests/localk8s/upstream/build.sh OUT_DIR [NAME...]
#
# With NAMEs, builds only those (e.g. `build.sh build/bin kubectl helm`).
# Incremental: a binary already in OUT_DIR that is newer than its family's
# go.mod, go.sum and *.go files and than this script, and was built by the same
# Go version, is left alone, so an incremental `make build` costs nothing here.
# FORCE=1 rebuilds anyway.
# Builds are static (CGO_ENABLED=0), -trimpath, -mod=readonly: go.sum must
# be complete (run `go mod tidy` in the family directory after changing go.mod).
set -euo pipefail

usage() { echo "usage: $0 OUT_DIR [NAME...]" >&2; exit 2; }
[[ $# -ge 1 && -n "$1" ]] || usage

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
shift

command -v go >/dev/null || { echo "build.sh: FAILED: 'go' is not on PATH" >&2; exit 1; }

# ---- pinned versions (must match the go.mod files) --------------------------
K8S_VERSION=v1.34.4
HELM_VERSION=v3.22.0
COREDNS_VERSION=v1.13.2
PROMETHEUS_VERSION=3.16.0   # module github.com/prometheus/prometheus v0.316.0
TRAEFIK_VERSION=v3.6.12

k8s_major=${K8S_VERSION#v}; k8s_major=${k8s_major%%.*}
k8s_minor=${K8S_VERSION#v*.}; k8s_minor=${k8s_minor%%.*}
# Same variables Kubernetes' hack/lib/version.sh sets, in both packages
# (component-base for the servers, client-go for kubectl's client version).
# buildDate is the release's tag time so the binaries are reproducible; the
# commit is not known from the module (empty instead of "$Format:%H$").
K8S_LDFLAGS=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$k8s_major"
  K8S_LDFLAGS+=" -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean -X $pkg.gitCommit="
  K8S_LDFLAGS+=" -X $pkg.buildDate=2026-02-10T12:53:36Z"
done
# As helm's Makefile: version, and the default Kubernetes version for
# `helm template`/lint = its client-go's minor (v0.37 -> 1.37).
HELM_LDFLAGS=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
HELM_LDFLAGS+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  HELM_LDFLAGS+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=37"
done
COREDNS_LDFLAGS=" -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"
PROMETHEUS_LDFLAGS=" -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION"
# Only the file, HTTP and Kubernetes service discoveries (Prometheus's own build tags): the
# cloud ones would triple the binary and the build for nothing the tests use.
PROMETHEUS_TAGS=remove_all_sd,enable_kubernetes_sd
# As traefik's Makefile; the build date is the module's publication time (reproducible).
TRAEFIK_LDFLAGS=" -X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION"
TRAEFIK_LDFLAGS+=" -X github.com/traefik/traefik/v3/pkg/version.BuildDate=2026-03-26T09:54:04Z"

# Test-only tools (Prometheus, traefik) are compiled without optimisation: a quarter less
# CPU on a cold machine (traefik: 527 s instead of 704 s), and the tests ask little of them.
NOOPT="all=-N -l"

# NAME | family dir | package | extra ldflags | build tags | gcflags
TARGETS=(
  "etcd|etcd|kvcache.local/localk8s/upstream/etcd/cmd/etcd|"
  "etcdctl|etcd|go.etcd.io/etcd/etcdctl/v3|"
  "kube-apiserver|kubernetes|k8s.io/kubernetes/cmd/kube-apiserver|$K8S_LDFLAGS"
  "kube-controller-manager|kubernetes|k8s.io/kubernetes/cmd/kube-controller-manager|$K8S_LDFLAGS"
  "kube-scheduler|kubernetes|k8s.io/kubernetes/cmd/kube-scheduler|$K8S_LDFLAGS"
  "kube-proxy|kubernetes|k8s.io/kubernetes/cmd/kube-proxy|$K8S_LDFLAGS"
  "kubectl|kubernetes|k8s.io/kubernetes/cmd/kubectl|$K8S_LDFLAGS"
  "helm|helm|helm.sh/helm/v3/cmd/helm|$HELM_LDFLAGS"
  "coredns|coredns|kvcache.local/localk8s/upstream/coredns|$COREDNS_LDFLAGS"
  "prometheus|prometheus|github.com/prometheus/prometheus/cmd/prometheus|$PROMETHEUS_LDFLAGS|$PROMETHEUS_TAGS|$NOOPT"
  "traefik|traefik|github.com/traefik/traefik/v3/cmd/traefik|$TRAEFIK_LDFLAGS||$NOOPT"
)

# ---- select -------------------------------------------------------------------
selected=()
if [[ $# -eq 0 ]]; then
  selected=("${TARGETS[@]}")
else
  for want in "$@"; do
    found=""
    for t in "${TARGETS[@]}"; do
      [[ "${t%%|*}" == "$want" ]] && { selected+=("$t"); found=1; }
    done
    [[ -n "$found" ]] || { echo "build.sh: FAILED: unknown binary '$want'" >&2; exit 2; }
  done
fi

GOVER="$(go env GOVERSION)"

# up_to_date BIN FAMILY_DIR: true if BIN exists and is newer than every input.
up_to_date() {
  local bin="$1" dir="$2"
  [[ -x "$bin" && "${FORCE:-0}" != 1 ]] || return 1
  [[ "$bin" -nt "$SELF" ]] || return 1
  # built by another Go toolchain (read from the binary's build info)?
  [[ "$(go version "$bin" 2>/dev/null)" == "$bin: $GOVER" ]] || return 1
  # any go.mod, go.sum or .go file in the family newer than the binary?
  [[ -z "$(find "$dir" \( -name go.mod -o -name go.sum -o -name '*.go' \) -newer "$bin" -print -quit)" ]]
}

export CGO_ENABLED=0
total=${#selected[@]}
i=0
t_all=$SECONDS
for t in "${selected[@]}"; do
  i=$((i + 1))
  IFS='|' read -r name fam pkg extra tags gcflags <<<"$t"
  dir="$HERE/$fam"
  bin="$OUT/$name"
  if up_to_date "$bin" "$dir"; then
    echo "build.sh: $name up to date ($i/$total)"
    continue
  fi
  echo "build.sh: building $name ($i/$total)..."
  t0=$SECONDS
  tmp="$OUT/.$name.tmp.$$"
  cmd=(go build -mod=readonly -trimpath -buildvcs=false ${tags:+-tags "$tags"}
       ${gcflags:+-gcflags "$gcflags"} -ldflags "-s -w$extra" -o "$tmp" "$pkg")
  if ! (cd "$dir" && "${cmd[@]}"); then
    rm -f "$tmp"
    echo "build.sh: FAILED building $name in $dir:" >&2
    echo "  (cd $dir && CGO_ENABLED=0$(printf ' %q' "${cmd[@]}"))" >&2
    exit 1
  fi
  mv -f "$tmp" "$bin"
  echo "build.sh: built $name in $((SECONDS - t0))s ($(du -h "$bin" | cut -f1))"
done
echo "build.sh: done ($total binaries checked, $((SECONDS - t_all))s) in $OUT"
