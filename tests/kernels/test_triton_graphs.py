"""The decode-graph contexts of the Triton kernels: the graph a step replays (the shortest listed context that
covers its longest sequence) runs the split-KV segment count fitted to that sequence, or to
``graph_min_seq_len`` positions if it is shorter, checked by brute force over every context up to the limit."""

from __future__ import annotations

from dataclasses import replace

import pytest
from unifer.kernels.triton.configs import CONFIGS, attention_launch, choose_num_segments
from unifer.kernels.triton.graphs import split_contexts

# (head_dim, GQA group, KV heads): Llama-3.2-1B, a wide MQA model, MHA with many heads.
SHAPES = [(64, 4, 8), (128, 8, 1), (256, 1, 16)]


@pytest.mark.parametrize("row", [("cuda", 90), ("cuda", 80), ("cuda", 100), ("default", None), ("hip", "gfx942")])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("max_model_len", [1000, 5000, 40961])
@pytest.mark.parametrize("floor", [None, 0, 3000])
def test_replayed_graph_runs_the_fitted_segment_count(row, shape, max_model_len, floor):
    cfg = CONFIGS[row].attention
    if floor is not None:
        cfg = replace(cfg, graph_min_seq_len=floor)
    head_dim, group, kv_heads = shape
    tile = attention_launch(cfg, head_dim=head_dim, group=group, decode=True)["TILE"]
    for seqs in (1, 2, 3, 4, 8, 16, 24, 64, 256):
        contexts = split_contexts(cfg, num_seqs=seqs, max_model_len=max_model_len, num_kv_heads=kv_heads, tile=tile)
        assert contexts == sorted(set(contexts)) and contexts[-1] == max_model_len

        def segments(length, seqs=seqs):
            return choose_num_segments(seqs, length, cfg, num_seqs=seqs, num_kv_heads=kv_heads, tile=tile)

        def fitted(length, seqs=seqs):
            return segments(max(length, min(cfg.graph_min_seq_len, max_model_len)), seqs)

        counts = [fitted(c) for c in contexts]
        assert len(set(counts)) == len(counts), (seqs, contexts, counts)  # no two graphs launch alike
        graph = 0
        for length in range(1, max_model_len + 1):
            while contexts[graph] < length:
                graph += 1
            assert counts[graph] == fitted(length), (seqs, length, contexts)


def test_hopper_contexts_for_llama_1b_shape():
    """The H200 row at Llama-3.2-1B's 131072 positions: batch 1 gets 16 segments up to 4095 positions (the count of
    2048, the floor), then 32 and 64; batch 8 the 8 segments of 2048 positions at every context; from 64 sequences
    a single unsplit graph. With no floor, batch 1 would run unsplit below 1024 positions."""
    cfg = CONFIGS[("cuda", 90)].attention
    tile = attention_launch(cfg, head_dim=64, group=4, decode=True)["TILE"]

    def contexts(seqs):
        return split_contexts(cfg, num_seqs=seqs, max_model_len=131072, num_kv_heads=8, tile=tile)

    assert contexts(1) == [4095, 8191, 131072]
    assert contexts(8) == [131072]
    assert contexts(64) == [131072]
    no_floor = split_contexts(replace(cfg, graph_min_seq_len=0), num_seqs=1, max_model_len=131072, num_kv_heads=8,
                              tile=tile)
    assert no_floor == [1023, 2047, 4095, 8191, 131072]
