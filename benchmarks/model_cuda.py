"""Whole-model benchmarks on a CUDA GPU (issue 5, benchmarks 3 and 4), Llama-3.2-1B shape, bf16, random weights.

3. Batch-1 decode: ms per token against the roofline (weight bytes / copy bandwidth measured in the same run),
   both for the captured decode step alone (graph replay) and for the whole engine step (schedule, runner,
   model, sampler, detokenizer), with decode graphs and with --enforce-eager; and with asynchronous scheduling
   (the default where the backend has step events) against synchronous scheduling, on a variant marked ":sync".
4. Offline throughput: N requests, prompt lengths uniform in 128-1024, output lengths uniform in 64-512
   (ignore_eos); output tokens/s of unifer against transformers ``generate`` (batched, left-padded, same
   prompts, same GPU, same run). transformers cannot stop rows at different lengths, so each of its batches
   runs to its longest output; it is credited only with the tokens the requests asked for.

    python benchmarks/model_cuda.py [--requests 512] [--hf-batch 128] [--skip-hf]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import tempfile
import time
from pathlib import Path

import torch

LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, tie_word_embeddings=True,
                rope_theta=500000.0, rms_norm_eps=1e-5)
MIXED_SIZES = [16, 32, 64, 128, 256, 512]  # the ``:mixed`` variants' mixed_graph_sizes


def make_checkpoint(folder: Path) -> Path:
    import transformers

    config = transformers.LlamaConfig(**LLAMA_1B, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    del model
    torch.cuda.empty_cache()
    return folder


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 1 GiB device-to-device copy (median of do_bench)."""
    import triton.testing

    src = torch.randn(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def weight_bytes(llm) -> int:
    seen, total = set(), 0
    for p in llm.engine.model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def decode_ms_per_token(llm, steps: int = 256, profile: str | None = None,
                        rows: int = 1) -> tuple[float, float | None]:
    """(ms per engine step, ms per batch-1 graph replay) for ``rows`` requests decoding ``steps`` tokens each after
    a 128-token prompt. ``profile``: also cProfile 128 more steps (after the timed ones) into this file."""
    from unifer import SamplingParams

    engine = llm.engine
    for i in range(rows):
        engine.add_request(f"decode{i}", {"prompt_token_ids": list(range(100 + i, 228 + i))},
                           SamplingParams(max_tokens=steps + 8, temperature=0.0, ignore_eos=True))
    engine.step()  # the prefills, in one step while rows x 128 tokens fit its budget
    for _ in range(4):
        engine.step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    torch.cuda.synchronize()
    step_ms = (time.perf_counter() - t0) * 1e3 / steps
    for i in range(rows):
        engine.abort_request(f"decode{i}")
    if profile:
        import cProfile
        import pstats

        engine.add_request("profile", {"prompt_token_ids": list(range(100, 228))},
                           SamplingParams(max_tokens=140, temperature=0.0, ignore_eos=True))
        engine.step()
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [engine.step() for _ in range(128)])
        with open(profile, "w") as f:
            pstats.Stats(profiler, stream=f).sort_stats("tottime").print_stats(25)
        engine.abort_request("profile")
    replay_ms = None
    runner = engine.runner
    if runner.graph_buckets:
        import triton.testing

        replay = runner._graphs[1]
        replay_ms = triton.testing.do_bench(replay, warmup=20, rep=200, return_mode="median")
    return step_ms, replay_ms


def single_decode_step(llm, context: int = 256):
    """Set a batch-1 engine (``max_num_seqs=1``) up to replay one decode at position ``context`` of one sequence:
    the decode graph's static inputs and the context's KV blocks are filled by hand. Returns (model, capture);
    ``capture(extra=None)`` captures ``runner._decode_logits`` (then ``extra()``, if given) into a fresh graph and
    returns its replay callable."""
    from unifer.backends.backend import AttentionMetadata

    engine = llm.engine
    runner, block = engine.runner, engine.runner.block_size
    max_len = engine.max_model_len
    st = runner._static
    metadata = engine.backend.build_metadata(AttentionMetadata(
        query_start_loc=st["query_start"][:2], seq_lens=st["seq_lens"][:1], block_table=st["block_table"][:1],
        slot_mapping=st["slots"][:1], max_query_len=1, max_seq_len=max_len))
    pages = context // block + 1
    with torch.inference_mode():
        for cache in runner.kv_caches:  # a context of finite values
            cache[:, 1:pages + 1].normal_()
        st["seq_lens"][0] = context + 1
        st["positions"][0] = context
        st["block_table"][0, :pages] = torch.arange(1, pages + 1, dtype=torch.int32)
        st["slots"][0] = pages * block + context % block

    def capture(extra=None):
        def step():
            logits = runner._decode_logits(1, metadata)
            if extra is not None:
                extra()
            return logits

        with torch.inference_mode():
            return engine.backend.graph_runner().capture(step)

    return engine.model, capture


def requests(n: int, seed: int = 0):
    rng = random.Random(seed)
    return [([rng.randrange(1000, 120000) for _ in range(rng.randint(128, 1024))], rng.randint(64, 512))
            for _ in range(n)]


def run_unifer(llm, reqs, warm) -> float:
    """Seconds to generate ``reqs``, after generating ``warm`` (as many requests, other prompts: every kernel
    specialisation compiled, no prefix-cache hits)."""
    from unifer import SamplingParams

    def inputs(batch):
        return ([{"prompt_token_ids": p} for p, _ in batch],
                [SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True) for _, m in batch])

    llm.generate(*inputs(warm), use_tqdm=False)
    prompts, params = inputs(reqs)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    assert [len(o.outputs[0].token_ids) for o in outs] == [m for _, m in reqs]
    return elapsed


def run_hf(folder: Path, reqs, batch: int) -> float:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16,
                                                              attn_implementation="sdpa").cuda().eval()
    order = sorted(reqs, key=lambda r: len(r[0]))  # similar lengths together: less padding, fairer to HF
    warm = torch.tensor([order[0][0][:128]], device="cuda")
    model.generate(warm, max_new_tokens=8, do_sample=False, pad_token_id=0)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, len(order), batch):
        chunk = order[i:i + batch]
        width = max(len(p) for p, _ in chunk)
        ids = torch.tensor([[0] * (width - len(p)) + p for p, _ in chunk], device="cuda")
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in chunk], device="cuda")
        longest = max(m for _, m in chunk)
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=longest, min_new_tokens=longest,
                           do_sample=False, eos_token_id=None, pad_token_id=0)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    del model
    torch.cuda.empty_cache()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--hf-batch", type=int, default=128)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--variants", default="4096x256",
                    help="unifer engine variants for the offline run: BUDGETxMAX_NUM_SEQS[:sync|:mixed], "
                         "comma-separated (:sync turns asynchronous scheduling off; :mixed captures graphs for steps "
                         f"with prefill tokens of up to {MIXED_SIZES[-1]} tokens)")
    ap.add_argument("--profile", default=None, help="cProfile the first variant's offline run into this file")
    ap.add_argument("--profile-decode", default=None, help="cProfile 128 batch-1 decode steps into this file")
    args = ap.parse_args()

    from unifer import LLM

    folder = make_checkpoint(Path(tempfile.mkdtemp()) / "llama-1b-shape")
    bw = copy_bandwidth()
    results: dict = {"device": torch.cuda.get_device_name(), "copy_bandwidth_GBps": bw / 1e9}

    # 3. batch-1 decode, eager then with graphs; 4. offline throughput per engine variant (one engine at a time:
    # each takes the memory share it is given)
    reqs, warm = requests(args.requests), requests(args.requests, seed=1)
    out_tokens = sum(m for _, m in reqs)
    results["offline"] = dict(requests=len(reqs), output_tokens=out_tokens, variants={})
    variants = []
    for v in args.variants.split(","):
        shape, _, mode = v.partition(":")
        budget, seqs = (int(x) for x in shape.split("x"))
        variants.append((budget, seqs, mode != "sync", mode == "mixed"))
    for eager, variant in [(True, variants[0])] + [(False, v) for v in variants]:
        budget, seqs, asynchronous, mixed = variant
        t0 = time.perf_counter()
        llm = LLM(model=str(folder), backend="cuda", dtype="bfloat16", max_model_len=2048, enforce_eager=eager,
                  max_num_batched_tokens=budget, max_num_seqs=seqs, async_scheduling=asynchronous,
                  mixed_graph_sizes=MIXED_SIZES if mixed and not eager else None)
        startup = time.perf_counter() - t0
        key = "decode_eager" if eager else "decode_graphs" if asynchronous else "decode_graphs_sync"
        if key not in results:
            wbytes = weight_bytes(llm)
            step_ms, replay_ms = decode_ms_per_token(llm, profile=args.profile_decode if key == "decode_graphs"
                                                     else None)
            results[key] = dict(startup_s=startup, weight_bytes=wbytes, roofline_ms=wbytes / bw * 1e3,
                                engine_step_ms=step_ms, replay_ms=replay_ms, kv_blocks=llm.engine.num_blocks)
        if not eager:
            if args.profile and not results["offline"]["variants"]:
                import cProfile
                import pstats

                profiler = cProfile.Profile()
                elapsed = profiler.runcall(run_unifer, llm, reqs, warm)
                stats = pstats.Stats(profiler, stream=open(args.profile, "w"))
                stats.sort_stats("tottime").print_stats(30)
            else:
                elapsed = run_unifer(llm, reqs, warm)
            name = (f"budget {budget}, max_num_seqs {seqs}" + ("" if asynchronous else ", synchronous scheduling")
                    + (", mixed graphs" if mixed else ""))
            while name in results["offline"]["variants"]:  # a variant listed twice, to interleave runs
                name += " (again)"
            results["offline"]["variants"][name] = dict(
                unifer_s=elapsed, unifer_tok_s=out_tokens / elapsed, startup_s=startup)
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    best = min(results["offline"]["variants"].values(), key=lambda v: v["unifer_s"])
    t_unifer = best["unifer_s"]
    results["offline"].update(unifer_s=t_unifer, unifer_tok_s=out_tokens / t_unifer)
    if not args.skip_hf:
        t_hf = run_hf(folder, reqs, args.hf_batch)
        results["offline"].update(hf_s=t_hf, hf_tok_s=out_tokens / t_hf, hf_batch=args.hf_batch,
                                  ratio=t_hf / t_unifer)

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"device: {results['device']}; copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")
    for key in ("graphs", "graphs_sync", "eager"):
        if f"decode_{key}" not in results:
            continue
        r = results[f"decode_{key}"]
        line = (f"batch-1 decode ({key}): roofline {r['roofline_ms']:.3f} ms/token ({r['weight_bytes'] / 1e9:.2f} GB "
                f"of weights); engine step {r['engine_step_ms']:.3f} ms = {r['roofline_ms'] / r['engine_step_ms']:.0%}"
                " of roofline")
        if r["replay_ms"]:
            line += f"; graph replay {r['replay_ms']:.3f} ms = {r['roofline_ms'] / r['replay_ms']:.0%} of roofline"
        print(line + f"; start-up {r['startup_s']:.1f} s, {r['kv_blocks']} KV blocks")
    o = results["offline"]
    for name, v in o["variants"].items():
        print(f"offline: {o['requests']} requests, {o['output_tokens']} output tokens; unifer ({name}) "
              f"{v['unifer_tok_s']:.0f} tok/s ({v['unifer_s']:.1f} s); engine start-up {v['startup_s']:.1f} s")
    if "hf_tok_s" in o:
        print(f"offline: transformers {o['hf_tok_s']:.0f} tok/s ({o['hf_s']:.1f} s, batch {o['hf_batch']}); "
              f"ratio unifer (best variant)/transformers {o['ratio']:.1f}x")


if __name__ == "__main__":
    main()
