"""Programmatic dependent launch on and off, timed in the same run (Llama-3.2-1B shape, bf16, random weights).

1. The captured batch-1 decode step at a 256-token context: graph-replay medians (triton.testing.do_bench), best of
   three alternating rounds; both graphs must give bit-identical logits.
2. The whole batch-1 engine step (schedule, replay, sample, detokenize), one engine per setting, in turn.

    python benchmarks/dependent_launch_cuda.py
"""

from __future__ import annotations

import dataclasses
import gc
import tempfile
from pathlib import Path

import torch
import triton.testing
from model_cuda import copy_bandwidth, decode_ms_per_token, make_checkpoint, single_decode_step, weight_bytes


def set_dependent_launch(on: bool) -> None:
    """Turn the launch on or off in the current device's config row; kernels launched from now on follow it."""
    from unifer.kernels.triton import configs, util

    major, minor = torch.cuda.get_device_capability()
    arch = major * 10 + minor
    configs.register("cuda", arch, dataclasses.replace(configs.lookup("cuda", arch), dependent_launch=on))
    util._configs_for.cache_clear()


def main() -> None:
    from unifer import LLM

    folder = make_checkpoint(Path(tempfile.mkdtemp()) / "llama-1b-shape")
    kwargs = dict(model=str(folder), backend="cuda", dtype="bfloat16", max_model_len=2048, max_num_seqs=1)
    llm = LLM(**kwargs)
    roofline = weight_bytes(llm) / copy_bandwidth() * 1e3
    print(f"device: {torch.cuda.get_device_name()}; roofline {roofline:.3f} ms per token")
    _, capture = single_decode_step(llm, context=256)
    best, logits = {}, {}
    for _ in range(3):
        for on in (False, True):
            set_dependent_launch(on)
            replay = capture()
            logits[on] = replay().clone()
            ms = triton.testing.do_bench(replay, warmup=20, rep=300, return_mode="median")
            best[on] = min(best.get(on, ms), ms)
    same = torch.equal(logits[False], logits[True])
    print(f"decode replay: dependent launch {best[True]:.4f} ms against {best[False]:.4f} ms without, "
          f"{best[False] / best[True]:.3f}x; {roofline / best[True]:.1%} against {roofline / best[False]:.1%} of the "
          f"roofline; logits {'bit-identical' if same else 'DIFFER'}")
    del llm, capture, replay
    gc.collect()
    torch.cuda.empty_cache()

    step = {}
    for on in (False, True, False, True):
        set_dependent_launch(on)
        llm = LLM(**kwargs)
        ms, _ = decode_ms_per_token(llm)
        step[on] = min(step.get(on, ms), ms)
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    print(f"engine step: dependent launch {step[True]:.4f} ms against {step[False]:.4f} ms without, "
          f"{step[False] / step[True]:.3f}x; {roofline / step[True]:.1%} against {roofline / step[False]:.1%} of the "
          f"roofline")


if __name__ == "__main__":
    main()
