"""Steps that admit a prompt while other requests decode: ms per such step run eagerly (the engine's default) and
replayed from a graph captured for its token count (``mixed_graph_sizes``), against a pure decode step of the same
engine. Llama-3.2-1B shape, bf16, random weights; both engines in this process, one after the other.

    python benchmarks/mixed_step_cuda.py [--decoding 4] [--prompt 256] [--steps 20]
    python benchmarks/mixed_step_cuda.py --model models/tiny-llama --backend cpu --dtype float32 --steps 2
                                                  # a dry run of the script, without a GPU
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import torch
from model_cuda import make_checkpoint

SIZES = [16, 32, 64, 128, 256, 512]


def timed_step(engine, sync) -> float:
    t0 = time.perf_counter()
    engine.step()
    sync()
    return (time.perf_counter() - t0) * 1e3


def measure(folder: Path, args, mixed_graph_sizes) -> tuple[float, float]:
    """(median ms of a step admitting a prompt, median ms of a pure decode step)."""
    from unifer import LLM, SamplingParams

    # Room for every decoding request and the admitted prompt: a prompt left waiting would time a decode step.
    llm = LLM(model=str(folder), backend=args.backend, dtype=args.dtype, max_model_len=2048,
              max_num_seqs=max(16, args.decoding + 1), max_num_batched_tokens=2048,
              mixed_graph_sizes=mixed_graph_sizes)
    engine = llm.engine
    sync = torch.cuda.synchronize if args.backend == "cuda" else (lambda: None)
    long = SamplingParams(max_tokens=4096, temperature=0.0, ignore_eos=True)
    for i in range(args.decoding):
        engine.add_request(f"decode{i}", {"prompt_token_ids": list(range(100 + i, 228 + i))}, long)
    for _ in range(4):
        engine.step()
    decode = [timed_step(engine, sync) for _ in range(args.steps)]
    mixed = []
    for j in range(args.steps):
        engine.add_request(f"prompt{j}", {"prompt_token_ids": [(7 * j + k) % 1000 + 4 for k in range(args.prompt)]},
                           SamplingParams(max_tokens=1, temperature=0.0))
        mixed.append(timed_step(engine, sync))
        assert engine.scheduler.num_waiting == 0, "the prompt was not admitted in its step"
        for _ in range(2):  # the prompt's token comes out one step late under asynchronous scheduling
            timed_step(engine, sync)
    replays = len(engine.runner._mixed_graphs)
    for i in range(args.decoding):
        engine.abort_request(f"decode{i}")
    del llm, engine
    gc.collect()
    print(f"  mixed graphs {replays}: steps admitting a prompt {', '.join(f'{t:.2f}' for t in mixed[:8])} ... ms")
    return statistics.median(mixed), statistics.median(decode)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decoding", type=int, default=4, help="requests decoding throughout")
    ap.add_argument("--prompt", type=int, default=256, help="tokens of each admitted prompt")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--model", default=None, help="a checkpoint; default: a Llama-3.2-1B-shape one, built on the GPU")
    args = ap.parse_args()
    folder = Path(args.model) if args.model else make_checkpoint(Path(tempfile.mkdtemp()) / "llama-1b-shape")
    rows = {"eager (default)": None, f"mixed graphs {SIZES}": SIZES}
    results = {name: measure(folder, args, sizes) for name, sizes in rows.items()}
    base = results["eager (default)"][0]
    print(f"{args.decoding} requests decoding, a {args.prompt}-token prompt admitted per step; median ms per step")
    for name, (mixed, decode) in results.items():
        print(f"{name:<40} admitting {mixed:8.3f} ms ({base / mixed:5.2f}x eager)   pure decode {decode:.3f} ms")


if __name__ == "__main__":
    main()
