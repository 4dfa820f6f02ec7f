#!/usr/bin/env bash
# Smoke test of the upstream binaries built by build.sh: starts etcd and
# kube-apiserver on loopback (generated CA and certs, throwaway dir), checks
# that kubectl reaches it (`get ns`), then stops both.
#
#   tests/localk8s/upstream/smoke.sh BIN_DIR
#
# Ports: etcd 127.0.0.1:${SMOKE_ETCD_PORT:-23790} (peer +10),
# apiserver 127.0.0.1:${SMOKE_API_PORT:-16443}. Loopback only.
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 BIN_DIR" >&2; exit 2; }
BIN="$(cd "$1" && pwd)"
EP=${SMOKE_ETCD_PORT:-23790}
PP=$((EP + 10))
AP=${SMOKE_API_PORT:-16443}
D="$(mktemp -d /tmp/localk8s-smoke.XXXXXX)"
pids=()
cleanup() {
  local rc=$?
  # stop in reverse start order (apiserver before etcd)
  for ((j = ${#pids[@]} - 1; j >= 0; j--)); do
    kill "${pids[j]}" 2>/dev/null || true
    wait "${pids[j]}" 2>/dev/null || true
  done
  if [[ $rc -ne 0 ]]; then
    echo "smoke: FAILED (rc=$rc); last log lines:" >&2
    tail -n 20 "$D"/etcd.log "$D"/apiserver.log >&2 2>/dev/null || true
  fi
  rm -rf "$D"
}
trap cleanup EXIT

# ---- certificates ---------------------------------------------------------------
cd "$D"
ossl() { openssl "$@" 2>/dev/null; }
ossl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 \
  -subj "/CN=localk8s-smoke-ca"
# cert NAME SUBJECT [SAN] [EKU]
cert() {
  local name=$1 subj=$2 san=${3:-} eku=${4:-clientAuth}
  ossl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n "$san" ]] && echo "subjectAltName=$san"
  } > "$name.ext"
  ossl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out "$name.crt" -days 1 -extfile "$name.ext"
}
cert apiserver "/CN=kube-apiserver" \
  "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
  serverAuth
cert admin "/O=system:masters/CN=kubernetes-admin"
ossl genrsa -out sa.key 2048
ossl rsa -in sa.key -pubout -out sa.pub

cat > kubeconfig <<KC
apiVersion: v1
kind: Config
clusters:
- name: smoke
  cluster: {server: "https://127.0.0.1:$AP", certificate-authority: "$D/ca.crt"}
users:
- name: admin
  user: {client-certificate: "$D/admin.crt", client-key: "$D/admin.key"}
contexts:
- name: smoke
  context: {cluster: smoke, user: admin}
current-context: smoke
KC

# ---- etcd -------------------------------------------------------------------------
t0=$SECONDS
"$BIN/etcd" --name smoke --data-dir "$D/etcd" \
  --listen-client-urls "http://127.0.0.1:$EP" --advertise-client-urls "http://127.0.0.1:$EP" \
  --listen-peer-urls "http://127.0.0.1:$PP" --initial-advertise-peer-urls "http://127.0.0.1:$PP" \
  --initial-cluster "smoke=http://127.0.0.1:$PP" \
  >"$D/etcd.log" 2>&1 &
pids+=($!)

# ---- kube-apiserver -----------------------------------------------------------------
"$BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$EP" \
  --bind-address 127.0.0.1 --secure-port "$AP" \
  --tls-cert-file apiserver.crt --tls-private-key-file apiserver.key \
  --client-ca-file ca.crt \
  --service-cluster-ip-range 10.96.0.0/16 \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file sa.pub --service-account-signing-key-file sa.key \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  >"$D/apiserver.log" 2>&1 &
pids+=($!)

K=("$BIN/kubectl" --kubeconfig "$D/kubeconfig")
for _ in $(seq 1 120); do
  if [[ "$("${K[@]}" get --raw /readyz 2>/dev/null)" == ok ]]; then break; fi
  sleep 0.5
done
"${K[@]}" get --raw /readyz >/dev/null
echo "smoke: apiserver ready after $((SECONDS - t0))s"
"${K[@]}" version
"${K[@]}" get ns
"${K[@]}" auth can-i '*' '*' --all-namespaces
echo "smoke: OK"
