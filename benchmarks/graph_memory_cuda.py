"""What CUDA graphs cost at start-up: seconds and device memory of an engine with decode graphs (the default) and
with graphs for steps with prefill tokens too (``mixed_graph_sizes``), against the same engine with
``enforce_eager``; and the decode graphs made in one stream capture (the cuda backend's default), one capture
each, and one capture each after a refused single capture. The KV cache is sized before any capture, so a graph's
memory pool comes out of the share of the device that ``gpu_memory_utilization`` leaves free; the last column says
how much of the device is in use.

Llama-3.2-1B shape, bf16, random weights; `unifer serve`'s limits (2048-token steps, 256 sequences) and 131072
positions (the checkpoint's), so the KV cache takes all the memory ``gpu_memory_utilization`` (0.9) gives it.
Each variant builds its engine alone, in order, twice; a first throwaway engine pays Triton's compilations.

    python benchmarks/graph_memory_cuda.py
    python benchmarks/graph_memory_cuda.py --model models/tiny-llama --backend cpu --dtype float32 \
        --max-model-len 2048 --rounds 1   # a dry run of the script, without a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import tempfile
import time
from pathlib import Path

import torch
from model_cuda import make_checkpoint

MIXED_SIZES = [16, 32, 64, 128, 256, 512, 1024, 2048]
# "one_capture": how the cuda graph runner captures: "1" (its default) one stream capture cut into a graph per
# bucket, "0" one capture per bucket, "refused" the single capture made but its cut refused, so that the runner
# falls back to one capture per bucket with the refused capture's graph still alive.
VARIANTS = {
    "enforce_eager": dict(enforce_eager=True),
    "decode graphs (default: one capture)": {},
    "decode graphs, one capture each": dict(one_capture="0"),
    "decode graphs, one capture refused after it was made": dict(one_capture="refused"),
    f"+ mixed graphs {MIXED_SIZES}": dict(mixed_graph_sizes=MIXED_SIZES),
}


@contextlib.contextmanager
def one_capture(how: str):
    from unifer_cuda import graph_split
    from unifer_cuda.graphs import ONE_CAPTURE_ENV

    def refuse(*args, **kwargs):
        raise graph_split.DriverError("refused by graph_memory_cuda.py")

    split = graph_split.split
    earlier = os.environ.get(ONE_CAPTURE_ENV)
    os.environ[ONE_CAPTURE_ENV] = "0" if how == "0" else "1"
    if how == "refused":
        graph_split.split = refuse
    try:
        yield
    finally:
        graph_split.split = split
        if earlier is None:
            del os.environ[ONE_CAPTURE_ENV]
        else:
            os.environ[ONE_CAPTURE_ENV] = earlier


def device_memory(backend: str) -> tuple[int, int, int, int]:
    """(bytes in use on the device by anyone, bytes torch's allocator reserves, the same once its cached free
    blocks are returned (what tensors and graph pools hold), device total)."""
    if backend != "cuda":
        return 0, 0, 0, 1
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    reserved = torch.cuda.memory_reserved()
    torch.cuda.empty_cache()
    return total - free, reserved, torch.cuda.memory_reserved(), total


def build(folder: Path, args, options: dict) -> dict:
    from unifer import LLM

    options = dict(options)
    how = options.pop("one_capture", "1")
    t0 = time.perf_counter()
    with one_capture(how):
        llm = LLM(model=str(folder), backend=args.backend, dtype=args.dtype, max_model_len=args.max_model_len,
                  max_num_batched_tokens=2048, max_num_seqs=256, **options)
    startup = time.perf_counter() - t0
    used, reserved, held, total = device_memory(args.backend)
    runner = llm.engine.runner
    row = dict(startup_s=startup, used=used, reserved=reserved, held=held, total=total, kv_blocks=llm.engine.num_blocks,
               graphs=len(runner._graphs) + len(runner._mixed_graphs))
    del llm, runner
    gc.collect()
    if args.backend == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-model-len", type=int, default=131072,
                    help="Llama-3.2-1B's; with 256 sequences the KV cache then fills its memory share")
    ap.add_argument("--model", default=None, help="a checkpoint; default: a Llama-3.2-1B-shape one, built on the GPU")
    args = ap.parse_args()
    folder = Path(args.model) if args.model else make_checkpoint(Path(tempfile.mkdtemp()) / "llama-1b-shape")
    build(folder, args, VARIANTS[f"+ mixed graphs {MIXED_SIZES}"])  # compiles every kernel variant once
    gib = 1 << 30
    for round_ in range(1, args.rounds + 1):
        rows = {name: build(folder, args, options) for name, options in VARIANTS.items()}
        base = rows["enforce_eager"]
        print(f"round {round_}: device total {base['total'] / gib:.1f} GiB, gpu_memory_utilization 0.9, "
              f"max_model_len {args.max_model_len}")
        for name, r in rows.items():
            print(f"  {name:<58} start-up {r['startup_s']:6.2f} s ({r['startup_s'] - base['startup_s']:+6.2f}); "
                  f"{r['graphs']:3d} graphs; torch reserves {r['reserved'] / gib:6.2f} GiB "
                  f"({(r['reserved'] - base['reserved']) / gib:+6.2f}), {r['held'] / gib:6.2f} GiB, cache emptied "
                  f"({(r['held'] - base['held']) / gib:+6.2f}); device in use {r['used'] / gib:6.2f} GiB "
                  f"= {r['used'] / r['total']:.3f} of total; {r['kv_blocks']} KV blocks")


if __name__ == "__main__":
    main()
