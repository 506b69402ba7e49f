"""Where a batch-1 decode step's GPU time goes: torch.profiler over replays of the captured decode graph
(Llama-3.2-1B shape, bf16, random weights), kernels grouped by name, against the weight-bytes roofline.

    python benchmarks/decode_profile_cuda.py [--replays 50] [--max-model-len 2048] [--max-num-seqs N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from model_cuda import copy_bandwidth, decode_ms_per_token, make_checkpoint, weight_bytes


def profiled(replay, replays: int):
    """torch.profiler's record of ``replays`` replays (GPU activity only), after five unprofiled."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(5):
        replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            replay()
        torch.cuda.synchronize()
    return prof


def kernel_times(replay, replays: int) -> dict[str, tuple[float, int]]:
    """{kernel name: (GPU µs per replay, calls per replay)} over ``replays`` replays, after five unprofiled."""
    prof = profiled(replay, replays)
    rows = {}
    for evt in prof.key_averages():
        if evt.device_type.name == "CUDA" and evt.self_device_time_total > 0:
            rows[evt.key] = (evt.self_device_time_total / replays, evt.count // replays)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replays", type=int, default=50)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--max-num-seqs", type=int, default=None, help="default: the engine's")
    args = ap.parse_args()
    from unifer import LLM

    folder = make_checkpoint(Path(tempfile.mkdtemp()) / "llama-1b-shape")
    llm = LLM(model=str(folder), backend="cuda", dtype="bfloat16", max_model_len=args.max_model_len,
              **({"max_num_seqs": args.max_num_seqs} if args.max_num_seqs else {}))
    bw = copy_bandwidth()
    roofline = weight_bytes(llm) / bw * 1e3
    step_ms, replay_ms = decode_ms_per_token(llm, steps=64)
    rows = kernel_times(llm.engine.runner._graphs[1], args.replays)
    busy = sum(t for t, _ in rows.values()) / 1e3
    print(f"roofline {roofline:.3f} ms; engine step {step_ms:.3f} ms; graph replay {replay_ms:.3f} ms; "
          f"kernels busy {busy:.3f} ms per replay (the rest of the replay: gaps between kernels)")
    print(f"{'us/replay':>10}{'calls':>7}  kernel")
    for name, (us, n) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        print(f"{us:>10.1f}{n:>7}  {name[:110]}")


if __name__ == "__main__":
    main()
