"""Eager engine steps (``enforce_eager``, as prefill and mixed steps always run): ms per decode step against the
GPU's busy time in it, and where the host's time goes (cProfile). Llama-3.2-1B shape, bf16, random weights.

    python benchmarks/eager_step_cuda.py [--rows 1 8] [--steps 64] [--profile-rows 8]

An eager step whose wall time far exceeds its kernels' busy time is bound by the host: Python, the ops' wrappers
and the kernel launches.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

import torch
from decode_profile_cuda import kernel_times
from model_cuda import make_checkpoint


def start(engine, rows: int, tokens: int) -> list[str]:
    """``rows`` requests decoding after a 128-token prompt, past their prefill and a few decode steps."""
    from unifer import SamplingParams

    ids = [f"eager{rows}-{i}" for i in range(rows)]
    for i, rid in enumerate(ids):
        engine.add_request(rid, {"prompt_token_ids": list(range(100 + i, 228 + i))},
                           SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True))
    for _ in range(5):
        engine.step()
    torch.cuda.synchronize()
    return ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--profile-rows", type=int, default=8, help="cProfile the steps of this many rows")
    args = ap.parse_args()
    from unifer import LLM

    folder = make_checkpoint(Path(tempfile.mkdtemp()) / "llama-1b-shape")
    llm = LLM(model=str(folder), backend="cuda", dtype="bfloat16", max_model_len=2048,
              max_num_seqs=max(args.rows), enforce_eager=True)
    engine = llm.engine
    print(f"device {torch.cuda.get_device_name()}; enforce_eager; {args.steps} steps per row count")
    for rows in args.rows:
        ids = start(engine, rows, tokens=2 * args.steps + 64)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        torch.cuda.synchronize()
        step_ms = (time.perf_counter() - t0) * 1e3 / args.steps
        kernels = kernel_times(engine.step, 16)
        busy_ms = sum(t for t, _ in kernels.values()) / 1e3
        launches = sum(n for _, n in kernels.values())
        print(f"batch {rows}: eager step {step_ms:.3f} ms; kernels busy {busy_ms:.3f} ms in {launches} launches; "
              f"host-bound share {1 - busy_ms / step_ms:.0%}; {1e3 * step_ms / launches:.1f} us of step per launch")
        if rows == args.profile_rows:
            profiler = cProfile.Profile()
            profiler.runcall(lambda: [engine.step() for _ in range(32)])
            torch.cuda.synchronize()
            for key in ("tottime", "cumulative"):
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(40)
                print(f"\ncProfile of 32 eager steps at batch {rows}, by {key}:")
                print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:12000])
        for rid in ids:
            engine.abort_request(rid)


if __name__ == "__main__":
    main()
