"""Triton compilations while serving, with and without the CUDA backend's startup warm-up.

Each mode runs in its own process with an empty Triton cache directory (a first start after installation): build
an engine on a 4-layer model of the Llama-3.2-1B attention shape, then drive a random workload step by step (300
requests arriving over 400 steps, half with prompts of 16-200 tokens and half of 1000-3000, 16-256 output tokens,
max_model_len 4096), counting the kernel variants compiled during the workload and timing each step. The
baseline is the same run with the warm-up skipped.

    python benchmarks/jit_warmup_cuda.py
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REQUESTS = 300
SHAPE = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=4, num_attention_heads=32,
             num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=True,
             rope_theta=500000.0, rms_norm_eps=1e-5)


def compiled_variants() -> dict[str, int]:
    """Kernel name -> variants in Triton's in-process cache, for every unifer Triton kernel."""
    from triton.runtime.jit import JITFunction
    from unifer.kernels.triton import module

    counts = {}
    for name in ("attention", "kv_write", "norm", "rotary", "activation"):
        for attr, fn in vars(module(name)).items():
            if isinstance(fn, JITFunction):
                counts[attr] = sum(len(cache[0]) for cache in fn.device_caches.values())
    return counts


def child(folder: str, warm: bool) -> None:
    from unifer import LLM, SamplingParams
    from unifer_cuda.backend import CUDABackend

    if not warm:
        CUDABackend.warm_up = lambda self, **kwargs: None
    t0 = time.perf_counter()
    llm = LLM(model=folder, backend="cuda", dtype="bfloat16", max_model_len=4096)
    startup = time.perf_counter() - t0
    before = compiled_variants()
    engine, rng = llm.engine, random.Random(0)
    # Requests arrive while others decode, as a server sees them: half with short prompts, half with long ones,
    # so steps mix a few prefill tokens with decodes over long contexts (the split-KV launches with prefill).
    arrivals = sorted(rng.uniform(0, 400) for _ in range(REQUESTS))  # the step each request arrives at
    steps, step, added = [], 0, 0
    t0 = time.perf_counter()
    while added < REQUESTS or engine.has_unfinished_requests():
        while added < REQUESTS and arrivals[added] <= step:
            length = rng.randint(16, 200) if rng.random() < 0.5 else rng.randint(1000, 3000)
            prompt = [rng.randrange(5, 31000) for _ in range(length)]
            engine.add_request(str(added), {"prompt_token_ids": prompt},
                               SamplingParams(max_tokens=rng.randint(16, 256), temperature=0.0, ignore_eos=True))
            added += 1
        s = time.perf_counter()
        engine.step()
        steps.append(time.perf_counter() - s)
        step += 1
    total = time.perf_counter() - t0
    after = compiled_variants()
    new = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    steps.sort()
    print("RESULT " + json.dumps(dict(
        warm_up=warm, startup_s=round(startup, 1), compiled_at_startup=sum(before.values()),
        compiled_while_serving=new, workload_s=round(total, 2), steps=len(steps),
        step_p50_ms=round(1e3 * steps[len(steps) // 2], 1), step_p99_ms=round(1e3 * steps[int(len(steps) * 0.99)], 1),
        step_max_ms=round(1e3 * steps[-1], 1), steps_over_200ms=sum(s > 0.2 for s in steps))))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3] == "1")
        return
    import transformers

    folder = Path(tempfile.mkdtemp()) / "llama-4l"
    config = transformers.LlamaConfig(**SHAPE, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device("cuda"):
        transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    torch.cuda.empty_cache()
    print(f"{'warm-up':<8}{'startup s':>10}{'variants':>9}{'compiled while serving':>40}{'workload s':>11}"
          f"{'steps':>7}{'step p50':>9}{'p99':>8}{'max ms':>8}{'>200ms':>7}")
    for warm in (False, True):
        env = dict(os.environ, TRITON_CACHE_DIR=tempfile.mkdtemp(prefix="triton-"))
        proc = subprocess.run([sys.executable, __file__, "--child", str(folder), "1" if warm else "0"], env=env,
                              capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{'on' if warm else 'off'}: failed (rc {proc.returncode})\n{proc.stderr[-3000:]}")
            continue
        r = json.loads(line[7:])
        served = ", ".join(f"{k} {v}" for k, v in r["compiled_while_serving"].items()) or "none"
        print(f"{'on' if warm else 'off':<8}{r['startup_s']:>10}{r['compiled_at_startup']:>9}{served:>40}"
              f"{r['workload_s']:>11}{r['steps']:>7}{r['step_p50_ms']:>9}{r['step_p99_ms']:>8}{r['step_max_ms']:>8}"
              f"{r['steps_over_200ms']:>7}")


if __name__ == "__main__":
    main()
