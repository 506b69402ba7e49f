#!/usr/bin/env bash
# The ROCm backend's conformance run without an AMD GPU: the op and attention levels, small shapes, through
# Triton's CPU interpreter with a CDNA arch's launch configs (verification mode, see plugins/rocm/README.md).
# Usage: scripts/ci_rocm.sh [gfx90a|gfx942|gfx950] [extra `unifer conformance` options]
# It proves the kernels' logic under the CDNA block shapes; the AOT compile to AMDGCN is in tests/rocm.
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${1:-gfx942}"
shift || true
out="${UNIFER_CI_OUT:-.ci/out}"
mkdir -p "$out"
# Small shapes: the two long-context scenarios (thousands of tokens) take minutes in the interpreter, so only
# long_decode at float16 stays, which is what exercises split-KV; property cases draw 10 random batches each.
small="not long_chunk and not long_decode or long_decode and float16"
UNIFER_ROCM_INTERPRET="$arch" TRITON_INTERPRET=1 .venv/bin/unifer conformance --backend rocm \
    --levels ops,attention -k "$small" --property-examples 10 \
    --report "$out/rocm-interpret-$arch.json" --markdown "$out/rocm-interpret-$arch.md" -q "$@"
