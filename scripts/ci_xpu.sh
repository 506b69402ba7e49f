#!/usr/bin/env bash
# CI check of the XPU backend without Intel GPU hardware: the conformance levels ops, attention and e2e run through
# the XPU backend's IPEX adapter on CPU tensors (IPEX's CPU build, torch 2.8, in .venv-xpu). Writes the JSON and
# Markdown report to $1 (default .ci/out). What this does and does not verify: plugins/xpu/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.ci/out}
bash scripts/setup_xpu_venv.sh
mkdir -p "$out"
export UNIFER_XPU_VERIFY_ON_CPU=1 UNIFER_PLUGINS=xpu,cpu  # cpu: the e2e level's reference backend
bin=.venv-xpu/bin

# A silent fallback would make the run prove nothing: the ops IPEX covers must show source "ipex".
"$bin/unifer" backends --json >"$out/xpu-backends.json"
"$bin/python" - "$out/xpu-backends.json" <<'EOF'
import json, sys

rows = {b["name"]: b for b in json.load(open(sys.argv[1]))["backends"]}
xpu = rows.get("xpu") or sys.exit("xpu backend not discovered")
if not xpu["available"]:
    sys.exit(f"xpu backend unavailable: {xpu['reason']}")
want = ("rms_norm", "rotary_embedding", "write_kv", "paged_attention")
wrong = {op: xpu["ops"].get(op) for op in want if xpu["ops"].get(op) != "ipex"}
if wrong:
    sys.exit(f"expected the IPEX adapter for {list(want)}, got {wrong}")
print(f"xpu: {xpu['reason']}\n  ops: {xpu['ops']}")
EOF

"$bin/unifer" conformance --backend xpu --levels ops,attention,e2e --report "$out/xpu-ipex-cpu.json" \
  --markdown "$out/xpu-ipex-cpu.md" -q
