"""Compile, before the first request, every attention launch that a step may pick.

Triton compiles a kernel variant the first time it is launched, about a second each on a Hopper GPU, and the step
that launches it (with every request in it) waits meanwhile. The other kernels have one variant per model. The
attention kernel has one per launch kind (decode only, or with prefill tokens) and split-KV segment count, which
``choose_num_segments`` derives from the step's tokens, sequences and longest context. The engine's profiling pass
compiles the unsplit prefill kind and decode-graph capture the decode kind at each bucket's count; ``warm_up``
runs one small step for each pair that steps within the engine's limits can reach, through the engine's own
runner, so the variants compiled are the ones serving will look up. Its steps read and write only the null block
(block 0), which real steps read only under a mask, sample nothing, and run eagerly, past any captured graph.
"""

from __future__ import annotations

from unifer.kernels.triton.configs import AttentionConfig, attention_launch, choose_num_segments
from unifer.kernels.triton.util import current_configs


def _powers_up_to(limit: int) -> list[int]:
    return sorted({1 << i for i in range(limit.bit_length()) if 1 << i <= limit} | {limit})


def attention_variants(cfg: AttentionConfig, *, head_dim: int, group: int, num_kv_heads: int,
                       max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int,
                       ) -> dict[tuple[bool, int], tuple[int, int]]:
    """(decode only, segments) -> (sequences, longest context) of one step that launches it, for every pair
    a step within these limits can launch.

    ``choose_num_segments`` takes the largest power of two under terms that fall as the sequences double and rise
    as the context doubles, so sequence counts and contexts that double from their smallest to their largest
    value (the most sequences the token budget admits, the longest context) reach every segment count that any
    step reaches."""
    contexts = [2, max_model_len] + [cfg.split_min_seq_len << i for i in range(max_model_len.bit_length())]
    contexts = sorted({c for c in contexts if 2 <= c <= max_model_len})
    found: dict[tuple[bool, int], tuple[int, int]] = {}
    for decode in (True, False):
        tile = attention_launch(cfg, head_dim=head_dim, group=group, decode=decode)["TILE"]
        extra = 0 if decode else 1  # with prefill tokens: one row has two new tokens
        for seqs in _powers_up_to(min(max_num_seqs, max_num_batched_tokens - extra)):
            tokens = seqs + extra
            for context in contexts:
                segments = choose_num_segments(tokens, context, cfg, num_seqs=seqs, num_kv_heads=num_kv_heads,
                                               tile=tile)
                found.setdefault((decode, segments), (seqs, context))
    return found


def warm_up(runner, *, max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int) -> int:
    """Run one step per attention variant on ``runner`` (the engine's ModelRunner); returns the step count."""
    spec = runner.model.spec
    variants = attention_variants(
        current_configs(runner.device).attention, head_dim=spec.head_dim, group=spec.heads // spec.kv_heads,
        num_kv_heads=spec.kv_heads, max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
        max_model_len=max_model_len)
    for (decode, _), (seqs, context) in variants.items():
        ids = [0] * context
        blocks = [0] * -(-context // runner.block_size)
        new = [1] * seqs if decode else [2] + [1] * (seqs - 1)
        # Eager: a captured graph would replay its own launch, not compile this one.
        runner.execute([(ids, context - n, n, blocks, False) for n in new], eager=True)
    return len(variants)
