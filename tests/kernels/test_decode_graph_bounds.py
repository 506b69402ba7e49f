"""Which context bounds the Triton backends capture decode graphs for (``decode_graph_bounds``), and that the
short bound's launch has no split and no merge. The kernels are replaced by recorders, so no kernel runs."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_attention_skip_empty import record_launches
from unifer.kernels.triton import lookup
from unifer.kernels.triton.configs import decode_graph_bounds

HOPPER = replace(lookup("cuda", 90).attention, short_context_graphs=1)
LLAMA_1B = dict(head_dim=64, group=4, num_kv_heads=8)


@pytest.mark.parametrize(("num_seqs", "max_model_len", "expected"), [
    (1, 131072, (1023, 131072)),
    (32, 2048, (1023, 2048)),  # 2 segments of 1024 positions
    (64, 131072, (131072,)),  # 512 programs without a split
    (1, 1023, (1023,)),  # never splits
    (1, 1024, (1023, 1024)),
    (200, 131072, (131072,)),  # past split_max_tokens
])
def test_bounds(num_seqs, max_model_len, expected):
    assert decode_graph_bounds(HOPPER, num_seqs=num_seqs, max_model_len=max_model_len, **LLAMA_1B) == expected


def test_off_unless_the_row_turns_it_on():
    off = replace(HOPPER, short_context_graphs=0)
    assert decode_graph_bounds(off, num_seqs=1, max_model_len=131072, **LLAMA_1B) == (131072,)


@pytest.mark.parametrize("max_model_len", [2048, 131072])
def test_short_bound_launches_no_merge(monkeypatch, max_model_len):
    launched = {}
    for bound in decode_graph_bounds(HOPPER, num_seqs=1, max_model_len=max_model_len, **LLAMA_1B):
        [(grid, _)], merges = record_launches(monkeypatch, bound=True, config=HOPPER, max_seq_len=bound)
        launched[bound] = (grid[1], len(merges))
    assert launched == {1023: (1, 0), max_model_len: (min(64, max_model_len // 128), 1)}


def test_unsplit_bounded_launch_is_warm_ups_variant(monkeypatch):
    # The short graph's launch (bounded metadata, one segment) is the variant warm_up compiles with eager steps.
    flags = [record_launches(monkeypatch, bound=bound, config=HOPPER, max_seq_len=1023)[0][0][1]["SKIP_EMPTY"]
             for bound in (False, True)]
    assert flags == [False, False]
