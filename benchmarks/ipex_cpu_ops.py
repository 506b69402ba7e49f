"""Would the CPU backend be faster with IPEX's kernels? The CPU backend's ops (torch SDPA attention, reference
kernels for the rest) against the XPU backend's IPEX adapter on CPU tensors, same inputs, same run, then offline
generation through both. Needs intel-extension-for-pytorch, so it runs in .venv-xpu:

    bash scripts/setup_xpu_venv.sh && .venv-xpu/bin/python benchmarks/ipex_cpu_ops.py [--repeats 20]

Prints "ratio" = CPU backend time / IPEX time (> 1: IPEX is faster). Medians of interleaved repeats. On a shared
machine, --threads 1 gives steadier numbers: a 2-thread OpenMP region stalls whenever one thread is descheduled.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

os.environ["UNIFER_XPU_VERIFY_ON_CPU"] = "1"  # lets LLM(backend="xpu") run the IPEX adapter on this CPU
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def compare(label: str, base, ipex, repeats: int) -> None:
    base(), ipex()  # warm-up (IPEX dispatch, allocator)
    a, b = [], []
    for _ in range(repeats):  # interleaved, so a machine-wide slowdown hits both sides
        a += timed(base, 1)
        b += timed(ipex, 1)
    ta, tb = statistics.median(a), statistics.median(b)
    print(f"{label:<52} cpu {ta * 1e3:9.3f} ms   ipex {tb * 1e3:9.3f} ms   ratio {ta / tb:6.2f}", flush=True)


def paged_inputs(seqs, q_heads, kv_heads, head_dim, block_size, dtype, heads_major: bool):
    """A step of (cached, new) tokens per sequence in shuffled blocks, the cache filled in each side's layout."""
    from unifer.backends import AttentionMetadata

    seq_lens = [c + n for c, n in seqs]
    need = [-(-n // block_size) for n in seq_lens]
    ids = (torch.randperm(sum(need), generator=torch.Generator().manual_seed(0)) + 1).tolist()
    tables, start = [], 0
    for n in need:
        tables.append(ids[start:start + n])
        start += n
    table = torch.zeros(len(seqs), max(need), dtype=torch.int32)
    for i, t in enumerate(tables):
        table[i, :len(t)] = torch.tensor(t, dtype=torch.int32)
    qsl = [0]
    for _, n in seqs:
        qsl.append(qsl[-1] + n)
    slots = [tables[i][p // block_size] * block_size + p % block_size
             for i, (c, n) in enumerate(seqs) for p in range(c, c + n)]
    md = AttentionMetadata(
        query_start_loc=torch.tensor(qsl, dtype=torch.int32), seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_table=table, slot_mapping=torch.tensor(slots, dtype=torch.int64), max_query_len=max(n for _, n in seqs),
        max_seq_len=max(seq_lens), query_start_loc_host=qsl, seq_lens_host=seq_lens)
    blocks = sum(need) + 1
    shape = (2, blocks, kv_heads, block_size, head_dim) if heads_major else (2, blocks, block_size, kv_heads, head_dim)
    cache = torch.randn(shape).to(dtype)
    query = torch.randn(qsl[-1], q_heads, head_dim).to(dtype)
    return query, cache, md


def op_benchmarks(repeats: int) -> None:
    from unifer.ops import reference
    from unifer_cpu import attention as cpu_attention
    from unifer_xpu import ipex_ops

    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        for tokens in (1, 32, 512):
            x, res = torch.randn(tokens, 4096).to(dtype), torch.randn(tokens, 4096).to(dtype)
            w = torch.randn(4096).to(dtype)
            compare(f"rms_norm+residual {name} t{tokens} d4096", partial(reference.rms_norm, x, w, 1e-6, residual=res),
                    partial(ipex_ops.rms_norm, x, w, 1e-6, residual=res), repeats)
        for tokens in (1, 32, 512):
            pos = torch.randint(0, 4096, (tokens,))
            q, k = torch.randn(tokens, 32, 128).to(dtype), torch.randn(tokens, 8, 128).to(dtype)
            cache = torch.randn(8192, 128)
            compare(f"rotary_embedding {name} t{tokens} h32/8 d128",
                    partial(reference.rotary_embedding, pos, q, k, cache),
                    partial(ipex_ops.rotary_embedding, pos, q, k, cache), repeats)
        for tokens in (1, 32, 512):
            k, v = torch.randn(tokens, 8, 128).to(dtype), torch.randn(tokens, 8, 128).to(dtype)
            slots = torch.randperm(64 * 16)[:tokens]
            c_ref, c_ipex = torch.zeros(2, 64, 16, 8, 128).to(dtype), torch.zeros(2, 64, 8, 16, 128).to(dtype)
            compare(f"write_kv {name} t{tokens} kv8 d128", partial(reference.write_kv, k, v, c_ref, slots),
                    partial(ipex_ops.write_kv, k, v, c_ipex, slots), repeats)
        batches = {"decode 16 x ctx 1024": [(1023, 1)] * 16, "prefill 2 x 512": [(0, 512)] * 2,
                   "mixed: 2 chunks of 256 after 512 + 8 decodes": [(512, 256)] * 2 + [(700, 1)] * 8}
        for label, seqs in batches.items():
            args_cpu = paged_inputs(seqs, 32, 8, 128, 16, dtype, heads_major=False)
            args_ipex = paged_inputs(seqs, 32, 8, 128, 16, dtype, heads_major=True)
            compare(f"paged_attention {name} {label} h32/8 d128",
                    partial(cpu_attention.paged_attention, *args_cpu, scale=128 ** -0.5),
                    partial(ipex_ops.paged_attention, *args_ipex, scale=128 ** -0.5), max(3, repeats // 4))


def generation(requests: int, output: int, rounds: int) -> None:
    from checkpoints import make_checkpoint
    from unifer import LLM, SamplingParams

    folder = Path(tempfile.mkdtemp()) / "bench-llama"
    make_checkpoint(folder, "LlamaForCausalLM", num_layers=4, hidden_size=1024, num_attention_heads=8,
                    num_key_value_heads=2, intermediate_size=2816, rope_scaling=None, max_positions=1024,
                    shard_size="100MB")
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(4, 512) for _ in range(rng.randint(32, 256))]}
               for _ in range(requests)]
    params = SamplingParams(max_tokens=output, temperature=0.0, ignore_eos=True)
    # Both engines stay loaded (a small fixed KV pool each) and their runs alternate, so a burst of load from
    # elsewhere on the machine hits both sides; the median of the rounds is reported.
    blocks = requests * (-(-(256 + output) // 16)) + 16
    # xpu here = the IPEX adapter on CPU tensors (verification switch)
    llms = {b: LLM(model=str(folder), backend=b, dtype="float32", block_size=16, num_blocks=blocks)
            for b in ("cpu", "xpu")}
    seconds: dict[str, list[float]] = {b: [] for b in llms}
    tokens = {}
    for llm in llms.values():
        llm.generate(prompts[:1], params, use_tqdm=False)  # warm-up
    for _ in range(rounds):
        for b, llm in llms.items():
            t0 = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            seconds[b].append(time.perf_counter() - t0)
            tokens[b] = [o.outputs[0].token_ids for o in outs]
    cpu, xpu = statistics.median(seconds["cpu"]), statistics.median(seconds["xpu"])
    print(f"generate float32, {requests} requests x {output} tokens (median of {rounds}): cpu {cpu:.2f} s   "
          f"ipex {xpu:.2f} s   ratio {cpu / xpu:.2f}   same tokens: {tokens['cpu'] == tokens['xpu']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--output", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="alternating generation runs per backend")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--skip-generate", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import intel_extension_for_pytorch as ipex

    print(f"torch {torch.__version__}, intel-extension-for-pytorch {ipex.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    op_benchmarks(args.repeats)
    if not args.skip_generate:
        generation(args.requests, args.output, args.rounds)


if __name__ == "__main__":
    main()
