"""After the warm-up, 100 engine steps of varying batch composition compile no new XLA graph.

Compilations are torch_xla's own count: the UncachedCompile counter (what TPUBackend.stats() reports) and the
number of CompileTime samples, both process-wide. The load changes by phase (light, bursts, drain, mixed) so
the steps cover decode-only, prefill-only and mixed batches, chunked prefills, prefix-cache hits, greedy,
logprobs, top-p and seeded sampling, and every (tokens, seqs) bucket of the configuration.

Runs in .venv-tpu (scripts/ci_tpu.sh) on XLA's CPU client; skipped where torch_xla is absent (the main .venv).
"""

from __future__ import annotations

import os
import random

import pytest

pytest.importorskip("torch_xla")
os.environ.setdefault("PJRT_DEVICE", "CPU")  # read by the backend and by torch_xla's runtime at first use

STEPS = 100


def _params(rng: random.Random):
    from unifer import SamplingParams

    kind = rng.random()
    tokens = rng.randrange(1, 24)
    if kind < 0.4:
        return SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    if kind < 0.55:
        return SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True, logprobs=rng.choice((0, 1, 5)))
    extra = {"top_p": 0.9} if kind < 0.8 else {}
    seed = rng.randrange(1000) if rng.random() < 0.5 else None
    return SamplingParams(temperature=0.8, seed=seed, max_tokens=tokens, ignore_eos=True, **extra)


def _arrivals(rng: random.Random, step: int) -> int:
    """Load changes by phase, so that the batch shrinks to a few decodes as well as filling the token budget."""
    if step < 20:
        return rng.choice((0, 0, 0, 1))  # light: small batches, mostly decodes
    if step < 55:
        return rng.choice((0, 1, 2, 5))  # bursts: mixed prefill + decode steps, chunked prefills
    if step < 75:
        return 0  # drain: decode-only steps of a shrinking batch
    return rng.choice((0, 0, 1, 2))


def _kind(rows) -> str:
    decodes = sum(1 for _, start, n, _, _ in rows if n == 1 and start > 0)
    return "decode-only" if decodes == len(rows) else "prefill-only" if decodes == 0 else "mixed"


def test_no_compilation_after_warm_up(monkeypatch):
    import torch_xla.debug.metrics as met
    from unifer import LLM
    from unifer_conformance import tiny_models
    from unifer_tpu import TPUBackend

    monkeypatch.setenv("UNIFER_TPU_WARMUP", "1")
    start = int(met.counter_value("UncachedCompile") or 0)  # process-wide: other tests may have compiled
    path = tiny_models.checkpoint("llama", 64 if 64 in TPUBackend().capabilities.head_sizes else 128)
    llm = LLM(model=str(path), backend="tpu", dtype="float32", block_size=16, num_blocks=80, max_model_len=256,
              max_num_batched_tokens=128, max_num_seqs=16, seed=0)
    engine, backend = llm.engine, llm.engine.backend
    warm = backend.stats()
    warm_compile_samples = met.metric_data("CompileTime")[0]  # one sample per XLA compilation
    assert warm["warmup_seconds"] is not None and warm["compilations"] > start, warm
    assert warm_compile_samples == warm["compilations"], (warm_compile_samples, warm)
    seen, kinds, chunked = set(), set(), 0
    original_pad, original_execute = backend.pad_batch, engine.runner.execute

    def pad_spy(**sizes):
        padded = original_pad(**sizes)
        seen.add(padded[:2])
        return padded

    def execute_spy(rows, prev_tokens=None):
        nonlocal chunked
        kinds.add(_kind(rows))
        chunked += sum(1 for row in rows if not row[4])  # a prefill chunk that does not reach the prompt's end
        return original_execute(rows, prev_tokens)

    monkeypatch.setattr(backend, "pad_batch", pad_spy)
    monkeypatch.setattr(engine.runner, "execute", execute_spy)
    rng = random.Random(0)
    shared = [rng.randrange(2, tiny_models.VOCAB) for _ in range(32)]
    hits_before = engine.kv.prefix_hits
    live, next_id, steps = [], 0, 0
    while steps < STEPS:
        for _ in range(_arrivals(rng, steps)):
            prompt = [rng.randrange(2, tiny_models.VOCAB) for _ in range(rng.randrange(1, 120))]
            if rng.random() < 0.25:
                prompt = shared + prompt[:40]  # prefix-cache hits: steps that start mid-sequence
            engine.add_request(f"r{next_id}", {"prompt_token_ids": prompt}, _params(rng))
            live.append(f"r{next_id}")
            next_id += 1
        if live and rng.random() < 0.05:
            engine.abort_request(live.pop(rng.randrange(len(live))))
        if not engine.has_unfinished_requests():
            engine.add_request(f"r{next_id}", {"prompt_token_ids": [5, 6, 7]}, _params(rng))
            live.append(f"r{next_id}")
            next_id += 1
        for out in engine.step():
            if out.finished and out.request_id in live:
                live.remove(out.request_id)
        steps += 1
    after = backend.stats()
    new = after["compilations"] - warm["compilations"]
    print(f"\nwarm-up: {warm['compilations'] - start} compilations in {warm['warmup_seconds']:.1f} s "
          f"({warm['compile_seconds']:.1f} s compiling); {STEPS} steps, {next_id} requests, kinds {sorted(kinds)}, "
          f"{chunked} chunked-prefill rows, {engine.kv.prefix_hits - hits_before} prefix-hit tokens, over buckets "
          f"{sorted(seen)}: {new} new compilations, "
          f"{after['cached_compilations'] - warm['cached_compilations']} cache hits")
    assert new == 0 and met.metric_data("CompileTime")[0] == warm_compile_samples, (
        f"{new} new compilation(s) in {STEPS} steps after warm-up; buckets seen {sorted(seen)}")
    # The steps really varied, so the test could have caught a recompilation: every kind of step, chunked
    # prefills and prefix hits, and (tokens, seqs) buckets of both sequence sizes.
    assert kinds == {"decode-only", "prefill-only", "mixed"}, kinds
    assert chunked > 0 and engine.kv.prefix_hits > hits_before
    assert len(seen) >= 6 and {s for _, s in seen} == {8, 16}, sorted(seen)
    assert after["cached_compilations"] > warm["cached_compilations"]

    # And the counter is live: a shape outside every bucket does compile.
    rows = [([5] * 200, 0, 200, list(range(1, 14)), True)]
    engine.runner.execute(rows)
    assert backend.stats()["compilations"] > after["compilations"]
