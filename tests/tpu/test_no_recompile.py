"""After the warm-up, 100 engine steps of varying batch composition compile no new XLA graph.

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


def test_no_compilation_after_warm_up(monkeypatch):
    from unifer import LLM
    from unifer_conformance import tiny_models
    from unifer_tpu import TPUBackend

    monkeypatch.setenv("UNIFER_TPU_WARMUP", "1")
    path = tiny_models.checkpoint("llama", 64 if 64 in TPUBackend().capabilities.head_sizes else 128)
    llm = LLM(model=str(path), backend="tpu", dtype="float32", block_size=16, num_blocks=80, max_model_len=256,
              max_num_batched_tokens=128, max_num_seqs=16, seed=0)
    engine, backend = llm.engine, llm.engine.backend
    warm = backend.stats()
    assert warm["warmup_seconds"] is not None and warm["compilations"] > 0, warm
    seen = set()
    original = backend.pad_batch

    def spy(**sizes):
        padded = original(**sizes)
        seen.add(padded[:2])
        return padded

    monkeypatch.setattr(backend, "pad_batch", spy)
    rng = random.Random(0)
    shared = [rng.randrange(2, tiny_models.VOCAB) for _ in range(32)]
    live, next_id, steps = [], 0, 0
    while steps < STEPS:
        for _ in range(rng.choice((0, 0, 1, 1, 2, 5))):  # bursts of arrivals: mixed prefill and decode steps
            prompt = [rng.randrange(2, tiny_models.VOCAB) for _ in range(rng.randrange(1, 120))]
            if rng.random() < 0.25:
                prompt = shared + prompt[:40]  # prefix-cache hits: steps that start mid-sequence
            engine.add_request(f"r{next_id}", {"prompt_token_ids": prompt}, _params(rng))
            live.append(f"r{next_id}")
            next_id += 1
        if live and rng.random() < 0.05:
            engine.abort_request(live.pop(rng.randrange(len(live))))
        if not engine.has_unfinished_requests():
            continue
        for out in engine.step():
            if out.finished and out.request_id in live:
                live.remove(out.request_id)
        steps += 1
    after = backend.stats()
    print(f"\nwarm-up: {warm['compilations']} compilations in {warm['warmup_seconds']:.1f} s; {STEPS} steps over "
          f"buckets {sorted(seen)}: {after['compilations'] - warm['compilations']} new, "
          f"{after['cached_compilations'] - warm['cached_compilations']} cache hits")
    assert after["compilations"] == warm["compilations"], (
        f"{after['compilations'] - warm['compilations']} new compilation(s) in {STEPS} steps after warm-up; "
        f"buckets seen {sorted(seen)}")
    # The steps really varied: several (tokens, seqs) buckets, i.e. the test could have caught a recompilation.
    assert len(seen) >= 4, sorted(seen)
    assert after["cached_compilations"] > warm["cached_compilations"]

    # And the counter is live: a shape outside every bucket does compile.
    rows = [([5] * 200, 0, 200, list(range(1, 14)), True)]
    engine.runner.execute(rows)
    assert backend.stats()["compilations"] > after["compilations"]
