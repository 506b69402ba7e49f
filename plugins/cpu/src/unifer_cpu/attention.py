"""Paged attention on the CPU through torch's scaled_dot_product_attention, one sequence at a time."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from unifer.backends import AttentionMetadata
from unifer.ops import reference


def paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata: AttentionMetadata,
    *,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    if soft_cap:  # SDPA has no soft-cap; the reference handles it exactly
        return reference.paged_attention(query, kv_cache, metadata, scale=scale, sliding_window=sliding_window,
                                         soft_cap=soft_cap)
    query_start, seq_lens = metadata.host_lists()
    block_size, num_kv_heads, head_dim = kv_cache.shape[2], kv_cache.shape[3], kv_cache.shape[4]
    group = query.shape[1] // num_kv_heads
    out = torch.empty_like(query)
    for i, seq_len in enumerate(seq_lens):
        q0, q1 = query_start[i], query_start[i + 1]
        q_len = q1 - q0
        if q_len == 0:
            continue
        num_blocks = -(-seq_len // block_size)
        blocks = metadata.block_table[i, :num_blocks].long()
        k = kv_cache[0, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].transpose(0, 1)
        v = kv_cache[1, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].transpose(0, 1)
        q = query[q0:q1].transpose(0, 1)
        mask = None
        if q_len > 1 or sliding_window:
            q_pos = torch.arange(seq_len - q_len, seq_len)[:, None]
            k_pos = torch.arange(seq_len)[None, :]
            mask = k_pos <= q_pos
            if sliding_window:
                mask &= k_pos > q_pos - sliding_window
        o = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=scale,
                                           enable_gqa=group > 1)
        out[q0:q1] = o.transpose(0, 1)
    return out
