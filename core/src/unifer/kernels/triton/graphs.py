"""The longest contexts a decode graph of the Triton kernels is captured for.

A captured graph fixes the attention launch, split-KV segment count included, which ``choose_num_segments`` derives
from the batch's longest context. A graph captured once, at ``max_model_len``, splits a short context as if it
were the longest: at batch 1 on an H200 a graph of Llama-3.2-1B's 131072 positions runs 64 segments, and the decode
step took 7% longer than with the 16 of 2048 positions (benchmarks/RESULTS.md). So each bucket gets one graph per
segment count its contexts reach, captured at the longest context with that count, and the runner replays the
shortest one covering the step's longest sequence. Contexts below ``AttentionConfig.graph_min_seq_len`` share the
graph of that length: an unsplit graph there was slower in the engine step than the split one.
"""

from __future__ import annotations

import torch

from unifer.kernels.triton.configs import AttentionConfig, attention_launch, choose_num_segments
from unifer.kernels.triton.util import current_configs


def split_contexts(cfg: AttentionConfig, *, num_seqs: int, max_model_len: int, num_kv_heads: int,
                   tile: int) -> list[int]:
    """Ascending; for each segment count that decode graphs of ``num_seqs`` sequences launch, the longest context
    with that count (the last: ``max_model_len``). A context shorter than ``cfg.graph_min_seq_len`` runs the count
    of that length."""
    floor = min(cfg.graph_min_seq_len, max_model_len)

    def segments(length: int) -> int:
        return choose_num_segments(num_seqs, max(length, floor), cfg, num_seqs=num_seqs, num_kv_heads=num_kv_heads,
                                   tile=tile)

    # The count changes only where the context reaches split_min_seq_len or a power of two times the tile.
    edges = {cfg.split_min_seq_len - 1} | {(tile << k) - 1 for k in range(max_model_len.bit_length())}
    longest: dict[int, int] = {}
    for length in sorted(e for e in edges if floor <= e < max_model_len) + [max_model_len]:
        longest[segments(length)] = length
    return sorted(longest.values())


def decode_graph_contexts(device: torch.device, *, num_seqs: int, max_model_len: int, num_heads: int,
                          num_kv_heads: int, head_dim: int) -> list[int]:
    """``Backend.decode_graph_contexts`` for a backend running ``unifer.kernels.triton`` on ``device``."""
    cfg = current_configs(device).attention
    tile = attention_launch(cfg, head_dim=head_dim, group=num_heads // num_kv_heads, decode=True)["TILE"]
    return split_contexts(cfg, num_seqs=num_seqs, max_model_len=max_model_len, num_kv_heads=num_kv_heads, tile=tile)
