"""Greedy generation is token-identical to transformers, with top-5 logprobs within 1e-4, in float32."""

from __future__ import annotations

import random

import pytest
from hf_reference import hf_greedy
from unifer import LLM, SamplingParams

MAX_TOKENS = 32
LOGPROB_TOL = 1e-4


def _prompts(seed: int, count: int = 8, shared_prefix: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    prefix = [rng.randrange(4, 512) for _ in range(shared_prefix)]
    lengths = [1, 3, 17, 31, 32, 33, 50, 70][:count]
    return [prefix + [rng.randrange(4, 512) for _ in range(n)] for n in lengths]


def _assert_matches_hf(outputs, reference):
    for out, (ref_tokens, ref_steps) in zip(outputs, reference, strict=True):
        got = out.outputs[0]
        assert got.token_ids == ref_tokens
        assert len(got.logprobs) == len(ref_steps)
        for step, ref in zip(got.logprobs, ref_steps, strict=True):
            ours = sorted(step.items(), key=lambda kv: -kv[1])[:5]
            assert [t for t, _ in ours] == list(ref)
            for token, value in ours:
                assert abs(value - ref[token]) < LOGPROB_TOL, (token, value, ref[token])


PARAMS = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=5, ignore_eos=True)


def test_greedy_matches_transformers(any_checkpoint):
    arch, folder = any_checkpoint
    prompts = _prompts(seed=1)
    llm = LLM(model=str(folder), backend="cpu", dtype="float32")
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], PARAMS, use_tqdm=False)
    _assert_matches_hf(outputs, hf_greedy(folder, prompts, MAX_TOKENS))


@pytest.mark.parametrize("variant", ["chunked_prefill", "preemption", "no_prefix_cache", "prefix_cache"])
def test_scheduling_variants_match_transformers(checkpoint_factory, variant):
    folder = checkpoint_factory("LlamaForCausalLM")
    options = dict(backend="cpu", dtype="float32", block_size=16)
    prompts = _prompts(seed=2)
    if variant == "chunked_prefill":
        options.update(max_num_batched_tokens=24)
    elif variant == "preemption":
        options.update(num_blocks=14)  # 13 usable blocks: far fewer than 8 sequences of up to 102 tokens need
    elif variant == "no_prefix_cache":
        options.update(enable_prefix_caching=False)
        prompts = _prompts(seed=3, shared_prefix=40)
    else:  # few slots, so later prompts arrive after the shared prefix is cached
        options.update(max_num_seqs=3)
        prompts = _prompts(seed=3, shared_prefix=40)
    llm = LLM(model=str(folder), **options)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], PARAMS, use_tqdm=False)
    _assert_matches_hf(outputs, hf_greedy(folder, prompts, MAX_TOKENS))
    kv = llm.engine.kv
    if variant == "preemption":
        assert all(o.outputs[0].finish_reason == "length" for o in outputs)
        assert llm.engine.scheduler.num_preemptions > 0
    if variant == "prefix_cache":
        assert kv.prefix_hits > 0
    if variant == "no_prefix_cache":
        assert kv.prefix_hits == 0
    assert kv.num_free_blocks == llm.engine.num_blocks - 1  # nothing leaked
