"""Paged attention on the CPU: the decodes of a step in one batched pass, each prefill through torch's SDPA."""

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
    out = torch.empty_like(query)
    decodes = [i for i in range(len(seq_lens)) if query_start[i + 1] - query_start[i] == 1]
    if len(decodes) < 2:  # a lone decode goes through SDPA like a prefill
        decodes = []
    else:
        _decode_batch(out, query, kv_cache, metadata, decodes, query_start, seq_lens, scale, sliding_window)
    batched = set(decodes)
    for i, seq_len in enumerate(seq_lens):
        if i not in batched and query_start[i + 1] > query_start[i]:
            _one_sequence(out, query, kv_cache, metadata, i, query_start, seq_len, scale, sliding_window)
    return out


def _decode_batch(out, query, kv_cache, metadata, rows, query_start, seq_lens, scale, window) -> None:
    """One query token per sequence: a single gather of every sequence's pages and two batched products, instead
    of a kernel call per sequence and layer (at batch 64 those calls cost more than the arithmetic)."""
    block_size, num_kv_heads, head_dim = kv_cache.shape[2], kv_cache.shape[3], kv_cache.shape[4]
    group = query.shape[1] // num_kv_heads
    lens = torch.tensor([seq_lens[i] for i in rows])
    num_blocks = -(-int(lens.max()) // block_size)
    table = metadata.block_table[torch.tensor(rows), :num_blocks].long()
    width = num_blocks * block_size
    pos = torch.arange(width)
    valid = pos[None, :] < lens[:, None]  # [B, width]
    if window:
        valid &= pos[None, :] >= lens[:, None] - window
    acc = torch.float64 if query.dtype == torch.float64 else torch.float32
    # Slots past a sequence's end may hold anything (NaN in the conformance suite). Their scores are overwritten by
    # the mask below, but a zero probability times a NaN value is NaN, so V's hidden rows are zeroed.
    k = kv_cache[0][table].reshape(len(rows), width, num_kv_heads, head_dim).to(acc)
    v = torch.where(valid[:, :, None, None], kv_cache[1][table].reshape(len(rows), width, num_kv_heads, head_dim),
                    0).to(acc)
    tokens = torch.tensor([query_start[i] for i in rows])
    q = query[tokens].to(acc).view(len(rows), num_kv_heads, group, head_dim)
    scores = torch.einsum("bkgd,blkd->bkgl", q, k) * scale
    probs = scores.masked_fill(~valid[:, None, None, :], float("-inf")).softmax(-1)
    o = torch.einsum("bkgl,blkd->bkgd", probs, v)
    out[tokens] = o.reshape(len(rows), -1, head_dim).to(out.dtype)


def _one_sequence(out, query, kv_cache, metadata, i, query_start, seq_len, scale, window) -> None:
    block_size, num_kv_heads, head_dim = kv_cache.shape[2], kv_cache.shape[3], kv_cache.shape[4]
    group = query.shape[1] // num_kv_heads
    q0, q1 = query_start[i], query_start[i + 1]
    q_len = q1 - q0
    num_blocks = -(-seq_len // block_size)
    blocks = metadata.block_table[i, :num_blocks].long()
    k = kv_cache[0, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].transpose(0, 1)
    v = kv_cache[1, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].transpose(0, 1)
    q = query[q0:q1].transpose(0, 1)
    mask = None
    if q_len > 1 or window:
        q_pos = torch.arange(seq_len - q_len, seq_len)[:, None]
        k_pos = torch.arange(seq_len)[None, :]
        mask = k_pos <= q_pos
        if window:
            mask &= k_pos > q_pos - window
    o = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=scale,
                                       enable_gqa=group > 1)
    out[q0:q1] = o.transpose(0, 1)
