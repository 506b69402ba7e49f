#!/usr/bin/env bash
# One device-machine call: install the carried wheels, then conformance (with --perf) and every CUDA benchmark.
# Prepare here first:  bash benchmarks/gpu_prepare.sh   (wheels of the workspace + deps into .whl, FlashInfer .fi)
# On the device:       bash benchmarks/gpu_session.sh [STAGE ...]
#   stages, run in this order whatever the order given: check sweep captured pages profile graphs prefetch fusion pdl
#   step step-ab fields-ab layout-ab eager mixed memory launch warmup prefill attention model conformance serve; none
#   given: all but sweep, captured, pages, profile, graphs, prefetch, step-ab, fields-ab, layout-ab, eager, mixed,
#   memory, launch and prefill
#   pages: attention_cuda.py --pages ${PAGES:-} (page sizes and layouts, allocated in that order)
#   prefill: attention_cuda.py --prefill-variants ${PREFILL_VARIANTS:-unmasked_full_tiles=0}
#   graphs: graph_capture_cuda.py --variants ${GRAPH_VARIANTS:-connections}
#   profile: the batch-1 decode graph's kernels, captured for each of PROFILE_MAX_MODEL_LENS (default 2048)
#   step-ab: the batch-1 engine step, with graphs captured for each of STEP_MAX_MODEL_LENS (default 2048), of core
#   at AB_BASE (.whl-base, from gpu_prepare.sh; carry it too) against this tree's, alternately, twice each
#   fields-ab: attention config fields AB_FIELDS (default skip_empty_segments=0) against the current row: the
#   kernel at captured and fitted segment counts, then the batch-1 engine step at each of STEP_MAX_MODEL_LENS
#   (default here 2048 131072) without and with them, alternately, twice each, with STEP_ROWS requests decoding
#   (default 1; several: "4 8"); AB_KERNEL=0 leaves the kernel timings out
#   layout-ab: the engine step with UNIFER_CUDA_KV_LAYOUT=NHD against HND, STEP_ROWS requests decoding (default 1),
#   graphs captured for max_model_len 2048, alternately, twice each
set -uo pipefail
stages=" ${*:-check fusion pdl step warmup model attention conformance serve} "
want() { [[ $stages == *" $1 "* ]]; }
out=${OUT:-/tmp/out}
mkdir -p "$out"
site=/tmp/site
mkdir -p "$site"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl 2>&1 | grep -v "already exists"
if [ -d .fi ]; then
  tar xzf .fi/flashinfer-slim.tgz -C "$site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .fi/*.whl
fi
export PYTHONPATH="$site:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 PATH="$site/bin:$PATH"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 -m unifer.cli backends | head -3

if want check; then
  python3 benchmarks/attention_cuda.py --check-only 2>&1 | tail -30
fi
if want sweep; then
  python3 benchmarks/attention_cuda.py --sweep 2>&1 | grep -v flashinfer | tee "$out/sweep.txt"
fi
if want captured; then
  python3 benchmarks/attention_cuda.py --captured 2>&1 | tee "$out/captured.txt"
fi
if want pages; then
  python3 benchmarks/attention_cuda.py --pages ${PAGES:-} 2>&1 | tee "$out/pages.txt"
fi
if want profile; then
  for len in ${PROFILE_MAX_MODEL_LENS:-2048}; do
    echo "== max_model_len $len"
    python3 benchmarks/decode_profile_cuda.py --max-model-len "$len" 2>&1 | grep -v "Loading weights\|Writing model"
  done | tee "$out/decode-profile.txt"
fi
if want graphs; then
  python3 benchmarks/graph_capture_cuda.py --variants "${GRAPH_VARIANTS:-connections}" 2>&1 | tee "$out/graph-capture.txt"
fi
if want prefetch; then
  python3 benchmarks/l2_prefetch_cuda.py 2>&1 | grep -v "Loading weights" | tee "$out/l2-prefetch.txt"
fi
if want fusion; then
  python3 benchmarks/fusion_cuda.py 2>&1 | grep -v "Loading weights\|Writing model" | tee "$out/fusion.txt"
fi
if want pdl; then
  python3 benchmarks/dependent_launch_cuda.py 2>&1 | grep -v "Loading weights\|Writing model" | tee "$out/dependent-launch.txt"
fi
if want step; then
  python3 benchmarks/engine_step_cuda.py 2>&1 | grep -v "Loading weights\|Writing model" | tee "$out/engine-step.txt"
fi
if want step-ab; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-base .whl-base/*.whl
  for len in ${STEP_MAX_MODEL_LENS:-2048}; do
    for round in 1 2; do
      for side in base this; do
        echo "== $side (round $round)"
        path=$PYTHONPATH; [ $side = base ] && path="/tmp/site-base:$PYTHONPATH"
        PYTHONPATH=$path python3 benchmarks/engine_step_cuda.py --max-model-len "$len" 2>&1 \
          | grep -v "Loading weights\|Writing model"
      done
    done
  done | tee "$out/engine-step-ab.txt"
fi
if want fields-ab; then
  fields=${AB_FIELDS:-skip_empty_segments=0}
  {
    if [ "${AB_KERNEL:-1}" = 1 ]; then
      python3 benchmarks/attention_cuda.py --captured "${fields// /,}" 2>&1 | grep -v "^  ok"
      python3 benchmarks/attention_cuda.py --variants "${fields// /,}" 2>&1 | grep -v "^  ok"
    fi
    for len in ${STEP_MAX_MODEL_LENS:-2048 131072}; do
      for rows in ${STEP_ROWS:-1}; do
        for round in 1 2; do
          for side in current fields; do
            echo "== $side (round $round)"
            extra=(); [ $side = fields ] && extra=(--attention $fields)
            python3 benchmarks/engine_step_cuda.py --max-model-len "$len" --rows "$rows" "${extra[@]}" 2>&1 \
              | grep -v "Loading weights\|Writing model"
          done
        done
      done
    done
  } | tee "$out/fields-ab.txt"
fi
if want layout-ab; then
  for rows in ${STEP_ROWS:-1}; do
    for round in 1 2; do
      for layout in NHD HND; do
        echo "== $layout (round $round)"
        UNIFER_CUDA_KV_LAYOUT=$layout python3 benchmarks/engine_step_cuda.py --rows "$rows" 2>&1 \
          | grep -v "Loading weights\|Writing model"
      done
    done
  done | tee "$out/layout-ab.txt"
fi
if want eager; then
  python3 benchmarks/eager_step_cuda.py 2>&1 | grep -v "Loading weights\|Writing model" | tee "$out/eager-step.txt"
fi
if want mixed; then
  python3 benchmarks/mixed_step_cuda.py 2>&1 | grep -v "Loading weights\|Writing model" | tee "$out/mixed-step.txt"
fi
if want memory; then
  python3 benchmarks/graph_memory_cuda.py 2>&1 | grep -v "Loading weights\|Writing model" | tee "$out/graph-memory.txt"
fi
if want launch; then
  python3 benchmarks/launch_overhead_cuda.py 2>&1 | tee "$out/launch-overhead.txt"
fi
if want warmup; then
  python3 benchmarks/jit_warmup_cuda.py 2>&1 | tee "$out/jit-warmup.txt"
fi
if want prefill; then
  python3 benchmarks/attention_cuda.py --prefill-variants ${PREFILL_VARIANTS:-unmasked_full_tiles=0} 2>&1 \
    | grep -v "INFO\|^  ok" | tee "$out/prefill-variants.txt"
fi
if want attention; then
  python3 benchmarks/attention_cuda.py 2>&1 | tee "$out/attention.txt"
fi
if want model; then
  python3 benchmarks/model_cuda.py --json "$out/model.json" --variants ${MODEL_VARIANTS:-4096x256,8192x256,8192x512} ${MODEL_PROFILE:+--profile "$out/profile.txt"} --profile-decode "$out/profile-decode.txt" ${MODEL_ARGS:-} 2>&1 | grep -v "Loading weights" | tee "$out/model.txt"
fi
if want conformance; then
  timeout ${CONFORMANCE_TIMEOUT:-3000} python3 -m unifer.cli conformance --backend cuda --perf --report "$out/cuda.json" \
    --markdown "$out/cuda.md" -q 2>&1 | tail -25
fi
if want serve; then
  bash benchmarks/serve_cuda.sh 2>&1 | tee "$out/serve.txt"
fi
