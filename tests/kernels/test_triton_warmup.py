"""The Triton warm-up: the attention variants it compiles cover every step within the engine's limits (checked by
brute force over those steps), and its steps touch only the null block of a real engine's KV cache."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from unifer.kernels.triton.configs import CONFIGS, attention_launch, choose_num_segments
from unifer.kernels.triton.warmup import attention_variants, warm_up

# (head_dim, GQA group, KV heads): Llama-3.2-1B, a wide MQA model, MHA with many heads.
SHAPES = [(64, 4, 8), (128, 8, 1), (256, 1, 16)]
# (max_num_batched_tokens, max_num_seqs, max_model_len)
LIMITS = [(150, 20, 2100), (48, 48, 1500), (2048, 7, 1030)]


def _reachable(cfg, head_dim, group, kv_heads, budget, max_seqs, max_len) -> set[tuple[bool, int]]:
    """(decode only, segments) over the steps within the limits: decode-only steps of every size at every context,
    and steps with prefill tokens (one row longer than the rest) at every size and context, with the fewest and
    the most tokens and five token counts drawn between."""
    rng = random.Random(0)
    found = set()
    for decode in (True, False):
        tile = attention_launch(cfg, head_dim=head_dim, group=group, decode=decode)["TILE"]
        for seqs in range(1, max_seqs + 1):
            if decode:
                token_counts = {seqs}
            elif seqs + 1 <= budget:
                token_counts = {seqs + 1, budget} | {rng.randint(seqs + 1, budget) for _ in range(5)}
            else:
                continue
            for tokens, context in itertools.product(token_counts, range(1 if decode else 2, max_len + 1)):
                found.add((decode, choose_num_segments(tokens, context, cfg, num_seqs=seqs, num_kv_heads=kv_heads,
                                                       tile=tile)))
    return found


@pytest.mark.parametrize("row", [("cuda", 90), ("cuda", 80), ("default", None), ("hip", "gfx942")])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("limits", LIMITS)
def test_variants_cover_every_step_within_the_limits(row, shape, limits):
    cfg = CONFIGS[row].attention
    head_dim, group, kv_heads = shape
    budget, max_seqs, max_len = limits
    variants = attention_variants(cfg, head_dim=head_dim, group=group, num_kv_heads=kv_heads,
                                  max_num_batched_tokens=budget, max_num_seqs=max_seqs, max_model_len=max_len)
    assert set(variants) == _reachable(cfg, head_dim, group, kv_heads, budget, max_seqs, max_len)
    for (decode, segments), (seqs, context) in variants.items():  # each representative is a legal step
        tokens = seqs if decode else seqs + 1
        tile = attention_launch(cfg, head_dim=head_dim, group=group, decode=decode)["TILE"]
        assert seqs <= max_seqs and tokens <= budget and context <= max_len
        assert choose_num_segments(tokens, context, cfg, num_seqs=seqs, num_kv_heads=kv_heads, tile=tile) == segments


def test_hopper_variants_for_llama_1b_shape():
    """The H200 row at the serving defaults: both launch kinds at every power-of-two segment count up to 64."""
    variants = attention_variants(CONFIGS[("cuda", 90)].attention, head_dim=64, group=4, num_kv_heads=8,
                                  max_num_batched_tokens=8192, max_num_seqs=256, max_model_len=8192)
    assert set(variants) == {(decode, 1 << i) for decode in (True, False) for i in range(7)}


def test_warm_up_touches_only_the_null_block(checkpoint_factory, monkeypatch):
    from hf_reference import hf_greedy
    from test_decode_graphs import RecordingGraphRunner
    from test_hf_equivalence import PARAMS, _assert_matches_hf, _prompts
    from unifer import LLM
    from unifer_cpu.backend import CPUBackend

    folder = checkpoint_factory("LlamaForCausalLM", max_positions=1100)
    graphs = RecordingGraphRunner()
    monkeypatch.setattr(CPUBackend, "graph_runner", lambda self: graphs)
    llm = LLM(model=str(folder), backend="cpu", dtype="float32", max_num_seqs=4, max_model_len=1100)
    engine = llm.engine
    replays = graphs.replays
    # The CPU rows: the portable defaults split 16 ways from 1024 positions, so both kinds, split and unsplit.
    steps = warm_up(engine.runner, max_num_batched_tokens=64, max_num_seqs=4, max_model_len=1100)
    assert steps == 4 and graphs.replays == replays
    assert all(not cache[:, 1:].any() for cache in engine.kv_caches)
    assert any(cache[:, 0].any() for cache in engine.kv_caches)
    prompts = _prompts(seed=3)[:3]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], PARAMS, use_tqdm=False)
    _assert_matches_hf(outputs, hf_greedy(folder, prompts, PARAMS.max_tokens))
    assert torch.isfinite(engine.kv_caches[0][:, 1:]).all()
