"""Decode on the whole engine (batch 1 unless ``--rows``): ms per engine step (schedule, input copy, graph replay,
sample, detokenize) and per graph replay, against the roofline (weight bytes / copy bandwidth measured in the same
run). Llama-3.2-1B shape, bf16, random weights; best of ``--rounds`` rounds of 256 steps.

    python benchmarks/engine_step_cuda.py [--rounds 3] [--max-model-len 2048] [--rows 1] [--attention FIELD=N ...]

``--rows`` decodes that many requests together (``max_num_seqs`` = rows, so the process holds a graph per bucket up
to it); the replay figure stays that of the batch-1 graph.

``--max-model-len`` sets the context the decode graphs are captured for, and so their split-KV segment count.
``--attention`` sets integer fields of the device's attention config row for this process, for A/B runs of
config variants. Last, it prints one request's 64 greedy tokens, so that processes run with different settings
(``UNIFER_CUDA_KV_LAYOUT``, say) can be checked to generate the same ones.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from model_cuda import copy_bandwidth, decode_ms_per_token, make_checkpoint, weight_bytes


def set_attention_fields(fields: dict[str, str]) -> None:
    """Re-register the current device's config row with these attention fields set (before any kernel runs)."""
    from dataclasses import replace

    from triton.runtime import driver
    from unifer.kernels.triton import configs

    target = driver.active.get_current_target()
    row = configs.lookup(target.backend, target.arch)
    attention = replace(row.attention, **{k: int(v) for k, v in fields.items()})
    configs.register(target.backend, target.arch, replace(row, attention=attention))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--attention", nargs="*", default=[], metavar="FIELD=N")
    args = ap.parse_args()
    if args.attention:
        set_attention_fields(dict(field.split("=") for field in args.attention))
    import unifer
    from unifer import LLM

    folder = make_checkpoint(Path(tempfile.mkdtemp()) / "llama-1b-shape")
    llm = LLM(model=str(folder), backend="cuda", dtype="bfloat16", max_model_len=args.max_model_len,
              max_num_seqs=args.rows)
    roofline = weight_bytes(llm) / copy_bandwidth() * 1e3
    rounds = [decode_ms_per_token(llm, rows=args.rows) for _ in range(args.rounds)]
    step = min(s for s, _ in rounds)
    replay = min(r for _, r in rounds)
    print(f"unifer from {Path(unifer.__file__).parent}; device {torch.cuda.get_device_name()}; "
          f"max_model_len {args.max_model_len}; attention {' '.join(args.attention) or 'as configured'}")
    # Greedy tokens of one request, for comparing processes that differ only in a setting: the checkpoint is seeded.
    from unifer import SamplingParams

    out = llm.generate({"prompt_token_ids": list(range(100, 228))},
                       SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True), use_tqdm=False)
    print(f"greedy tokens 64 after a 128-token prompt: {out[0].outputs[0].token_ids}")
    # The replay is the batch-1 graph's, so only a batch-1 step has a host share to print.
    host = f"; step - replay {1e3 * (step - replay):.1f} us" if args.rows == 1 else ""
    print(f"batch-{args.rows} decode: roofline {roofline:.3f} ms; engine step {step:.4f} ms ({roofline / step:.1%}), "
          f"batch-1 graph replay {replay:.4f} ms ({roofline / replay:.1%}){host}; rounds "
          + ", ".join(f"{s:.4f}" for s, _ in rounds))


if __name__ == "__main__":
    main()
