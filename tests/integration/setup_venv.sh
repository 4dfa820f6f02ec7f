#!/usr/bin/env bash
# Creates or updates the Python venv the integration tests use for tools Debian does not
# package (schemathesis, openapi-spec-validator): build/venv, from Debian's /usr/bin/python3,
# with the exact versions in requirements-venv.txt. Idempotent: does nothing when the venv
# already matches the requirements file. Called by `make deps`.
#
# Usage: tests/integration/setup_venv.sh [VENV_DIR]   (default: <repo>/build/venv)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
venv="${1:-${KVCACHE_TEST_VENV:-${repo}/build/venv}}"
requirements="${here}/requirements-venv.txt"
python=/usr/bin/python3
stamp="${venv}/.requirements.sha256"

want="$(sha256sum "${requirements}" | cut -d' ' -f1)"
if [[ -x "${venv}/bin/python" && -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]] &&
   "${venv}/bin/python" -c 'import schemathesis, openapi_spec_validator' 2>/dev/null; then
  echo "venv ${venv} is up to date"
  exit 0
fi

# A venv made by another interpreter (e.g. a pyenv python3 earlier on PATH) is replaced.
if [[ -d "${venv}" ]] && ! grep -qx 'home = /usr/bin' "${venv}/pyvenv.cfg" 2>/dev/null; then
  echo "replacing ${venv}: not made from ${python}"
  rm -rf "${venv}"
fi
if [[ ! -x "${venv}/bin/python" ]]; then
  if ! "${python}" -c 'import ensurepip' 2>/dev/null; then
    echo "${python} has no venv support: apt-get install python3-venv" >&2
    exit 1
  fi
  mkdir -p "$(dirname "${venv}")"
  "${python}" -m venv "${venv}"
fi
rm -f "${stamp}"
"${venv}/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
  --require-virtualenv -r "${requirements}"
echo "${want}" > "${stamp}"
echo "venv ${venv} ready: $("${venv}/bin/schemathesis" --version)"
