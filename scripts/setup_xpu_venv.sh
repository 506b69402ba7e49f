#!/usr/bin/env bash
# Create .venv-xpu: torch 2.8 + intel-extension-for-pytorch 2.8 (CPU build) for verifying the XPU backend's IPEX
# adapter on CPU tensors (scripts/ci_xpu.sh). Separate from .venv because IPEX pins torch to 2.8.
#
# PyPI's torch 2.8.0 for Linux x86_64 is the CUDA 12.8 build. `--no-deps` alone does not import: libtorch.so links
# libtorch_cuda.so, whose DT_NEEDED entries name 11 NVIDIA libraries. So we install torch --no-deps plus exactly
# those libraries (versions from torch's metadata) and skip what torch only loads on demand on a GPU (triton,
# nvrtc, nvtx, cusolver). UNIFER_XPU_TORCH_DEPS=full installs torch with all its dependencies instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${UNIFER_XPU_VENV:-$root/.venv-xpu}
mode=${UNIFER_XPU_TORCH_DEPS:-linked}
stamp="$venv/.unifer-xpu-setup-$(cat scripts/setup_xpu_venv.sh core/pyproject.toml conformance/pyproject.toml \
  plugins/cpu/pyproject.toml plugins/xpu/pyproject.toml | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
quiet() { grep -v -e "is ignored" -e "requires nvidia-" -e "requires triton" -e "dependency resolver does not" \
  -e "dependency conflicts" || true; }

torch_linked=(
  nvidia-cuda-runtime-cu12==12.8.90 nvidia-cublas-cu12==12.8.4.1 nvidia-cudnn-cu12==9.10.2.21
  nvidia-cufft-cu12==11.3.3.83 nvidia-cufile-cu12==1.13.1.3 nvidia-curand-cu12==10.3.9.90
  nvidia-cusparse-cu12==12.5.8.93 nvidia-cusparselt-cu12==0.7.1 nvidia-nccl-cu12==2.27.3
  nvidia-cuda-cupti-cu12==12.8.90 nvidia-nvjitlink-cu12==12.8.93
)
# Everything else, transitive dependencies included, pinned and installed --no-deps (no resolver run): torch's
# non-NVIDIA dependencies, IPEX's, unifer core's (without the server's), the conformance suite's and transformers'
# (the end-to-end level writes its tiny checkpoints with it).
pins=(
  intel-extension-for-pytorch==2.8.0 psutil==7.1.3 packaging==26.3 numpy==2.4.6
  filelock==4.2.11 typing-extensions==4.16.0 sympy==1.14.0 mpmath==1.3.0 networkx==3.6.1 jinja2==3.1.6
  markupsafe==3.0.4 fsspec==2026.9.0
  pluggy==1.7.0 pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
  safetensors==0.8.0 tokenizers==0.23.3 tqdm==4.70.1
  hypothesis==6.170.15 sortedcontainers==2.4.0 pytest==9.2.0 iniconfig==2.3.1 pygments==2.21.0
  transformers==5.23.0 huggingface-hub==2.4.0 hf-xet==1.8.0 pyyaml==6.0.3 regex==2026.11.15 httpx2==2.16.2
  httpcore2==2.16.2 h11==0.16.0 anyio==4.16.0 idna==3.20 truststore==0.10.5 typer==0.29.2 click==8.5.1
  shellingham==1.5.4 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 annotated-doc==0.0.7
)
if [ "$mode" = full ]; then
  "${pip[@]}" torch==2.8.0 2>&1 | quiet
else
  "${pip[@]}" --no-deps torch==2.8.0 "${torch_linked[@]}" 2>&1 | quiet
fi
"${pip[@]}" --no-deps "${pins[@]}" 2>&1 | quiet
"${pip[@]}" --no-deps -e core -e plugins/cpu -e plugins/xpu -e conformance 2>&1 | quiet
# IPEX prints a few registration warnings on import; show them only if the import fails.
if ! log=$("$venv/bin/python" -c "import torch, intel_extension_for_pytorch, transformers, unifer_xpu, \
  unifer_conformance; torch.ones(2).sum()" 2>&1); then echo "$log"; exit 1; fi
rm -f "$venv"/.unifer-xpu-setup-*
touch "$stamp"
