#!/usr/bin/env bash
# The TPU backend's CI where no TPU exists: .venv-tpu (torch 2.9 + torch-xla 2.9) on XLA's CPU client.
#  1. the conformance suite's ops, attention, sampling and e2e levels through the tpu backend ($out/tpu.json|md);
#  2. tests/tpu: after warm-up, 100 engine steps of varying batch composition compile no new graph; the
#     communicator's wiring.
# Both always run; the script fails if either does. What this does and does not prove: plugins/tpu/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${UNIFER_CI_OUT:-.ci/out}
mkdir -p "$out"
export PJRT_DEVICE=CPU
# Every distinct shape is an XLA compilation on 2 CPU cores: the property cases draw fewer random shapes than
# the suite's default 50 (UNIFER_TPU_PROPERTY_EXAMPLES=50 restores it). The fixed grid runs in full.
examples=${UNIFER_TPU_PROPERTY_EXAMPLES:-20}

t0=$SECONDS
bash scripts/setup_tpu_venv.sh
echo "ci_tpu: .venv-tpu ready in $((SECONDS - t0)) s"

status=0
t1=$SECONDS
.venv-tpu/bin/unifer conformance --backend tpu --levels ops,attention,sampling,e2e --property-examples "$examples" \
  --report "$out/tpu.json" --markdown "$out/tpu.md" -q || status=1
echo "ci_tpu: conformance in $((SECONDS - t1)) s"
t2=$SECONDS
.venv-tpu/bin/python -m pytest -q -s -p no:cacheprovider tests/tpu || status=1
echo "ci_tpu: tests/tpu in $((SECONDS - t2)) s; total $((SECONDS - t0)) s"
exit $status
