#!/usr/bin/env bash
# The TPU backend's CI where no TPU exists: .venv-tpu (torch 2.9 + torch-xla 2.9) on XLA's CPU client.
#  1. the conformance suite's ops, attention, sampling and e2e levels through the tpu backend ($out/tpu.json|md);
#  2. tests/tpu (none may skip here): after warm-up, 100 engine steps of varying batch composition compile no
#     new graph; the Pallas attention path against the kernel's own input checks and reference semantics; the
#     communicator's wiring.
# Both always run; the script fails if either does. What this does and does not prove: plugins/tpu/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${UNIFER_CI_OUT:-.ci/out}
mkdir -p "$out"
export PJRT_DEVICE=CPU
# Every distinct shape is an XLA compilation (about 900 in the suite, 1-2 minutes of compiling on 2 cores); the
# whole script still takes about 5 minutes with a fresh .venv-tpu, so nothing is cut: the fixed grid in full and
# the suite's default 50 random shapes per property case (UNIFER_TPU_PROPERTY_EXAMPLES lowers it if CI must).
examples=${UNIFER_TPU_PROPERTY_EXAMPLES:-50}

t0=$SECONDS
bash scripts/setup_tpu_venv.sh
echo "ci_tpu: .venv-tpu ready in $((SECONDS - t0)) s"

status=0
t1=$SECONDS
.venv-tpu/bin/unifer conformance --backend tpu --levels ops,attention,sampling,e2e --property-examples "$examples" \
  --report "$out/tpu.json" --markdown "$out/tpu.md" -q || status=1
echo "ci_tpu: conformance in $((SECONDS - t1)) s"
t2=$SECONDS
UNIFER_TPU_NO_SKIPS=1 .venv-tpu/bin/python -m pytest -q -s -rs -p no:cacheprovider tests/tpu || status=1
echo "ci_tpu: tests/tpu in $((SECONDS - t2)) s; total $((SECONDS - t0)) s"
exit $status
