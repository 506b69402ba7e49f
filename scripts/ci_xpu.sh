#!/usr/bin/env bash
# CI check of the XPU backend without Intel GPU hardware, in .venv-xpu (torch 2.8 + IPEX 2.8 CPU build;
# scripts/setup_xpu_venv.sh), with UNIFER_XPU_VERIFY_ON_CPU=1 (the IPEX adapter runs on CPU tensors):
#  1. `unifer backends`: the four ops IPEX covers must come from "ipex", not the reference;
#  2. the conformance levels ops, attention and e2e through the XPU backend ($out/xpu-ipex-cpu.json|md), counting
#     the calls that reach IPEX's kernels (torch.ops.torch_ipex.*) per level: each level must really run them
#     ($out/xpu-ipex-calls.json), so a silent fallback to the reference fails the run;
#  3. pytest tests/xpu in .venv-xpu: the real IPEX kernels (exact KV layout, bf16/fp16 attention against a float64
#     emulation of its FlashAttention-style rounding, the claims of this path, canaries for the
#     IPEX behaviours the adapter works around). The main test run ignores tests/xpu; tests/test_xpu_*.py need no
#     IPEX (a stand-in implements its calling conventions) and run in the main .venv.
# All steps always run; the script fails if any does. Usage: scripts/ci_xpu.sh [OUT_DIR] (default .ci/out).
# What this does and does not verify: plugins/xpu/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.ci/out}
t0=$SECONDS
bash scripts/setup_xpu_venv.sh
echo "ci_xpu: .venv-xpu ready in $((SECONDS - t0)) s"
mkdir -p "$out"
export UNIFER_XPU_VERIFY_ON_CPU=1 UNIFER_PLUGINS=xpu,cpu  # cpu: the e2e level's reference backend
bin=.venv-xpu/bin
# IPEX registers kernels over torch's on import and says so on stderr, once per process, in ~40 lines.
noise=(-e "Warning only once for all operators" -e "Overriding a previously registered kernel" -e "  operator: "
  -e "    registered at " -e "  dispatch key: " -e "  previous kernel: " -e "       new kernel: "
  -e "No CUDA runtime is found")
quiet() { grep -v "${noise[@]}" || true; }
status=0

"$bin/unifer" backends --json >"$out/xpu-backends.json"
"$bin/python" - "$out/xpu-backends.json" <<'EOF' || status=1
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

t1=$SECONDS
# `unifer conformance --backend xpu --levels ops,attention,e2e` (the same CLI, in-process), with a counter on the
# IPEX kernels that the adapter's ops end in. The counts are attributed to levels case by case.
"$bin/python" - "$out" <<'EOF' 2> >(quiet >&2) || status=1
import collections, json, sys

import intel_extension_for_pytorch  # noqa: F401  (registers torch.ops.torch_ipex)
import torch
import unifer_conformance.suite as suite
from unifer_conformance.cli import main

out = sys.argv[1]
KERNELS = {"rmsnorm": "rms_norm", "rotary_position_embedding": "rotary_embedding", "reshape_and_cache": "write_kv",
           "flash_attn_varlen_func": "paged_attention"}
total = collections.Counter()
for kernel in KERNELS:
    real = getattr(torch.ops.torch_ipex, kernel)

    def counted(*args, _real=real, _kernel=kernel, **kwargs):
        total[_kernel] += 1
        return _real(*args, **kwargs)

    setattr(torch.ops.torch_ipex, kernel, counted)  # IPEX looks the op up on every call
per_level = collections.defaultdict(collections.Counter)
run_suite, seen = suite.run_suite, collections.Counter()


def counting_run_suite(*args, progress=None, **kwargs):
    def on_case(row):
        per_level[row["level"]].update(total - seen)
        seen.update(total - seen)
        if progress:
            progress(row)

    return run_suite(*args, progress=on_case, **kwargs)


suite.run_suite = counting_run_suite
rc = main(["--backend", "xpu", "--levels", "ops,attention,e2e", "--report", f"{out}/xpu-ipex-cpu.json",
           "--markdown", f"{out}/xpu-ipex-cpu.md", "-q"])
need = {"ops": ("rmsnorm", "rotary_position_embedding", "reshape_and_cache"),
        "attention": ("reshape_and_cache", "flash_attn_varlen_func"), "e2e": tuple(KERNELS)}
missing = {level: [k for k in kernels if not per_level[level][k]] for level, kernels in need.items()}
missing = {level: ks for level, ks in missing.items() if ks}
json.dump({"per_level": per_level, "missing": missing}, open(f"{out}/xpu-ipex-calls.json", "w"), indent=1)
for level in need:
    print(f"ipex kernel calls, {level}: " + ", ".join(f"{k} {per_level[level][k]}" for k in KERNELS), file=sys.stderr)
if missing:
    print(f"ci_xpu: these levels never reached the IPEX kernels: {missing}", file=sys.stderr)
sys.exit(rc or bool(missing))
EOF
echo "ci_xpu: conformance in $((SECONDS - t1)) s"

t2=$SECONDS
"$bin/python" -m pytest -q -p no:cacheprovider tests/xpu 2> >(quiet >&2) || status=1
echo "ci_xpu: pytest in $((SECONDS - t2)) s; total $((SECONDS - t0)) s"
exit $status
