#!/usr/bin/env bash
# Create .venv (once) and install the pinned dependencies and the workspace's distributions, editable.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${UNIFER_VENV:-$root/.venv}
req=${1:-requirements/test.txt}
stamp="$venv/.unifer-setup-$(cat requirements/*.txt scripts/setup.sh */pyproject.toml plugins/*/pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" -r "$req" 2>&1 | grep -v "is ignored" || true
"${pip[@]}" --no-deps -e core -e plugins/cpu -e plugins/cuda -e plugins/rocm -e plugins/xpu -e plugins/tpu -e conformance 2>&1 | grep -v "is ignored" || true
"$venv/bin/python" -c "import unifer, unifer_cpu, unifer_cuda, unifer_rocm, unifer_xpu, unifer_tpu, unifer_conformance, torch, transformers" 
rm -f "$venv"/.unifer-setup-*
touch "$stamp"
