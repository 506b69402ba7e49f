#!/usr/bin/env bash
# Create .venv-tpu (once): torch 2.9 + torch-xla 2.9 from PyPI, for running the TPU backend on XLA's CPU client
# (PJRT_DEVICE=CPU) where no TPU exists. The main .venv keeps its own torch; the two never mix.
#
# JAX at the versions torch-xla's `pallas` extra pins comes too: not to run the Pallas kernel (that needs a TPU),
# but so tests/tpu can check the TPU attention path against the kernel module's own input checks and reference.
#
# PyPI's torch 2.9 is the CUDA build. Installed with --no-deps and only its pure-Python requirements it does not
# import (libtorch_cuda.so links libcudart, cuBLAS, cuDNN, NCCL, ...), so the CUDA libraries that libtorch links
# at load time are installed too; the ones it only opens lazily (triton, cuSOLVER, NVRTC, NVTX) are skipped,
# saving about 1.2 GB. UNIFER_TPU_FULL_DEPS=1 installs torch's full requirement set instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${UNIFER_TPU_VENV:-$root/.venv-tpu}
TORCH=torch==2.9.1
TORCH_XLA=torch-xla==2.9.0
# Pins shared with requirements/base.txt and test.txt (minus torch), and what the e2e level needs.
PINNED=(pluggy==1.7.0 pydantic==2.14.3 safetensors==0.8.0 tokenizers==0.23.3 tqdm==4.70.1 numpy==2.4.6
        transformers==5.23.0 hypothesis==6.170.15 pytest==9.2.0 packaging)
SKIP="triton nvidia-cusolver-cu12 nvidia-cuda-nvrtc-cu12 nvidia-nvtx-cu12"

stamp="$venv/.unifer-tpu-setup-$(cat scripts/setup_tpu_venv.sh core/pyproject.toml conformance/pyproject.toml \
  plugins/cpu/pyproject.toml plugins/tpu/pyproject.toml | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
quiet() { grep -v -e "is ignored" -e "dependency conflicts" -e "which is not installed" -e "resolver does not" || true; }

"${pip[@]}" "${PINNED[@]}" 2>&1 | quiet
if [ "${UNIFER_TPU_FULL_DEPS:-0}" = 1 ]; then
  "${pip[@]}" "$TORCH" "${TORCH_XLA/torch-xla/torch-xla[pallas]}" 2>&1 | quiet
else
  "${pip[@]}" --no-deps "$TORCH" "$TORCH_XLA" 2>&1 | quiet
  # torch's and torch-xla's own requirements for this platform (torch-xla's with its `pallas` extra: JAX), less
  # the lazily loaded CUDA parts.
  mapfile -t deps < <("$venv/bin/python" - "$SKIP" <<'EOF'
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement
skip = set(sys.argv[1].split())
for dist, extras in (("torch", ("",)), ("torch_xla", ("", "pallas"))):
    for line in requires(dist) or []:
        req = Requirement(line)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        if req.name.lower() not in skip:
            print(str(req).split(";")[0])
EOF
)
  "${pip[@]}" "${deps[@]}" 2>&1 | quiet
fi
"${pip[@]}" --no-deps -e core -e plugins/cpu -e plugins/tpu -e conformance 2>&1 | quiet
PJRT_DEVICE=CPU "$venv/bin/python" -c "
import torch, torch_xla, unifer, unifer_cpu, unifer_tpu, unifer_conformance, transformers, jax
assert torch.__version__.startswith('2.9') and torch_xla.__version__.startswith('2.9'), torch.__version__
x = torch.ones(2, 2, device=torch_xla.device()); assert float((x @ x).sum()) == 8.0
"
rm -f "$venv"/.unifer-tpu-setup-*
touch "$stamp"
