#!/usr/bin/env bash
# Copies the repository's KVCache CRD (crds/, the one source) into the chart, which helm can
# only read inside its own directory. tests/chart checks the copy is byte-for-byte equal.
#   charts/kvcache-operator/sync-crds.sh          # copy
#   charts/kvcache-operator/sync-crds.sh --check  # exit 1 if the copy differs
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src="$here/../../crds/kvcache.io_kvcaches.yaml"
dst="$here/files/crds/kvcache.io_kvcaches.yaml"
if [ "${1:-}" = --check ]; then
  cmp "$src" "$dst" || { echo "$dst differs from crds/kvcache.io_kvcaches.yaml: run $0" >&2; exit 1; }
  exit 0
fi
mkdir -p "$(dirname "$dst")"
cp "$src" "$dst"
echo "copied crds/kvcache.io_kvcaches.yaml -> ${dst#"$here/"}"
