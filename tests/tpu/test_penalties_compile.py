"""Sampling with repetition / frequency / presence penalties compiles a bounded number of XLA graphs: the
sampler pads its token-index tensors to power-of-two lengths, so a long decode reuses graphs instead of compiling
one per step as its outputs grow. Runs in .venv-tpu (scripts/ci_tpu.sh) on XLA's CPU client."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torch_xla")
os.environ.setdefault("PJRT_DEVICE", "CPU")

STEPS = 60


def test_penalty_sampling_reuses_graphs(monkeypatch):
    from unifer import LLM, SamplingParams
    from unifer_conformance import tiny_models
    from unifer_tpu import TPUBackend

    monkeypatch.setenv("UNIFER_TPU_WARMUP", "0")
    path = tiny_models.checkpoint("llama", 64 if 64 in TPUBackend().capabilities.head_sizes else 128)
    llm = LLM(model=str(path), backend="tpu", dtype="float32", block_size=16, num_blocks=64, max_model_len=256,
              max_num_batched_tokens=128, max_num_seqs=8, seed=0)
    engine, backend = llm.engine, llm.engine.backend
    params = SamplingParams(temperature=0.0, max_tokens=STEPS + 5, ignore_eos=True, repetition_penalty=1.3,
                            frequency_penalty=0.5, presence_penalty=0.2)
    for i, n in enumerate((7, 19, 33)):
        engine.add_request(f"p{i}", {"prompt_token_ids": list(range(3, 3 + n))}, params)
    compiles = []
    for _ in range(STEPS):
        engine.step()
        compiles.append(backend.stats()["compilations"])
    late = compiles[-1] - compiles[9]  # after the first steps have met every shape the model itself needs
    print(f"\n{STEPS} penalised decode steps: {compiles[-1] - compiles[0]} compilations after the first step, "
          f"{late} in the last {STEPS - 10}")
    # Outputs grow by 3 tokens a step, 150 in the last 50 steps: without buckets that is one compilation per
    # step; with them, one per power-of-two length crossed (64, 128: at most a handful of graphs).
    assert late <= 6, compiles
