#!/bin/sh
# chart.render: the no-cluster chart tests with the helm localk8s builds (HELM, default
# build/bin/helm). Exits 77 (skipped) when that helm is missing: `make localk8s` builds it.
here=$(cd "$(dirname "$0")" && pwd)
HELM=${HELM:-$here/../../build/bin/helm}
if [ ! -x "$HELM" ]; then echo "SKIP: $HELM missing (make localk8s builds helm v3.22.0)"; exit 77; fi
export HELM
cd "$here" && exec /usr/bin/python3 -m pytest -q -p no:cacheprovider test_chart_render.py "$@"
