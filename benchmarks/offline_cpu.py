"""Offline throughput on the CPU: unifer LLM.generate vs transformers generate, same prompts, same run.

    .venv/bin/python benchmarks/offline_cpu.py [--requests 64] [--hidden 512] [--layers 4]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from checkpoints import make_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--min-prompt", type=int, default=32)
    ap.add_argument("--max-prompt", type=int, default=256)
    ap.add_argument("--output", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hf-batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    folder = Path(tempfile.mkdtemp()) / "bench-llama"
    make_checkpoint(folder, "LlamaForCausalLM", num_layers=args.layers, hidden_size=args.hidden,
                    num_attention_heads=args.hidden // 64, num_key_value_heads=max(1, args.hidden // 256),
                    intermediate_size=args.hidden * 3, rope_scaling=None, max_positions=1024, shard_size="50MB")
    rng = random.Random(0)
    prompts = [[rng.randrange(4, 512) for _ in range(rng.randint(args.min_prompt, args.max_prompt))]
               for _ in range(args.requests)]
    total_out = args.requests * args.output

    from unifer import LLM, SamplingParams

    llm = LLM(model=str(folder), backend="cpu", dtype="float32")
    params = SamplingParams(max_tokens=args.output, temperature=0.0, ignore_eos=True)
    llm.generate([{"prompt_token_ids": prompts[0]}], params, use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    t_unifer = time.perf_counter() - t0
    assert sum(len(o.outputs[0].token_ids) for o in outs) == total_out

    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    t0 = time.perf_counter()
    for i in range(0, len(prompts), args.hf_batch):
        chunk = prompts[i:i + args.hf_batch]
        width = max(map(len, chunk))
        ids = torch.tensor([[3] * (width - len(p)) + p for p in chunk])  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=args.output, min_new_tokens=args.output,
                           do_sample=False, eos_token_id=None, pad_token_id=3)
    t_hf = time.perf_counter() - t0

    print(f"model: Llama hidden {args.hidden}, {args.layers} layers, float32; {args.requests} requests, prompts "
          f"{args.min_prompt}-{args.max_prompt} tokens, {args.output} output tokens each; {torch.get_num_threads()} "
          "threads")
    print(f"unifer       : {total_out / t_unifer:8.1f} output tok/s ({t_unifer:.2f} s)")
    print(f"transformers : {total_out / t_hf:8.1f} output tok/s ({t_hf:.2f} s, batch {args.hf_batch}, padded)")
    print(f"ratio unifer/transformers: {t_hf / t_unifer:.2f}x")


if __name__ == "__main__":
    main()
