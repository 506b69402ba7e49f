"""KV writes and paged attention with static shapes, in the KV layout of torch_xla's ragged paged attention.

Layout of one layer's cache: [num_blocks, block_size, 2 * kv_heads, head_dim], the key of KV head h at combined
head 2h and its value at 2h + 1 (the Pallas kernel reads K and V of a head from one page row).

Nothing here depends on a value that lives on the device: sequence ownership, positions and masks are computed
as tensors from the metadata, so one compiled graph serves every batch of the same padded shape. Plain torch,
so the same functions run (and are tested) on the CPU.
"""

from __future__ import annotations

import torch
from unifer.backends import AttentionMetadata, Unsupported


def kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int) -> tuple[int, ...]:
    return (num_blocks, block_size, 2 * num_kv_heads, head_dim)


def target_slots(slot_mapping: torch.Tensor, num_tokens: int, num_slots: int) -> torch.Tensor:
    """Flat cache rows for the first ``num_tokens`` slots; padding (-1) becomes ``num_slots``, one past the end.
    XLA's scatter drops out-of-bounds updates, whereas torch_xla wraps a negative index to the last slot."""
    slots = slot_mapping[:num_tokens].long()
    return torch.where(slots >= 0, slots, torch.full_like(slots, num_slots))


def write_kv(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    num_blocks, block_size, combined, head_dim = kv_cache.shape
    tokens = key.shape[0]
    rows = torch.stack((key, value), dim=2).reshape(tokens, combined, head_dim).to(kv_cache.dtype)
    flat = kv_cache.view(num_blocks * block_size, combined, head_dim)
    flat.index_copy_(0, target_slots(slot_mapping, tokens, num_blocks * block_size), rows)


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata: AttentionMetadata,
    *,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """Every query token attends over its own sequence's pages, gathered through the block table: memory
    O(tokens x block-table width x block size), fine for verification, which is what this path is for on
    non-TPU XLA devices. ``query`` may be shorter than the padded metadata (only its tokens are computed)."""
    tokens, heads, head_dim = query.shape
    _, block_size, combined, _ = kv_cache.shape
    kv_heads = combined // 2
    dev = query.device
    qsl = metadata.query_start_loc.long()
    seq_lens = metadata.seq_lens.long()
    num_seqs = seq_lens.shape[0]

    tok = torch.arange(tokens, device=dev)
    # Owner of each token: how many sequences end at or before it (comparisons, not a data-dependent search).
    seq = (tok[:, None] >= qsl[None, 1:]).sum(dim=1).clamp(max=num_seqs - 1)
    real = tok < qsl[-1]
    q_pos = seq_lens[seq] - (qsl[seq + 1] - qsl[seq]) + (tok - qsl[seq])

    pages = kv_cache[metadata.block_table.long()[seq]]  # [T, W, block, 2 KVH, D]
    pages = pages.reshape(tokens, -1, combined, head_dim)
    k_pos = torch.arange(pages.shape[1], device=dev)
    visible = (k_pos[None, :] <= q_pos[:, None]) & real[:, None]
    if sliding_window:
        visible &= k_pos[None, :] > (q_pos - sliding_window)[:, None]

    acc = _acc(query)
    q = query.to(acc).view(tokens, kv_heads, heads // kv_heads, head_dim)
    k = pages[:, :, 0::2].to(acc)
    # Unused slots may hold anything (NaN in the conformance suite): zero V where hidden, mask the scores.
    v = torch.where(visible[:, :, None, None], pages[:, :, 1::2].to(acc), 0.0)
    scores = torch.einsum("tkgd,tlkd->tkgl", q, k) * scale
    if soft_cap:
        scores = soft_cap * torch.tanh(scores / soft_cap)
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("tkgl,tlkd->tkgd", probs, v)
    out = torch.where(real[:, None, None, None], out, 0.0)  # padding tokens saw nothing: 0, not NaN
    return out.reshape(tokens, heads, head_dim).to(query.dtype)


def kernel_heads_tile(num_kv_heads: int, dtype: torch.dtype) -> bool:
    """Whether the Pallas kernel can lay out this many KV heads: K and V interleaved give 2 x kv_heads rows,
    packed ``32 / bits`` to a 32-bit word, which must come to 1, 2, 4, 8 or a multiple of 8 (torch_xla 2.9's
    ``get_min_heads_per_blk``). Power-of-two head counts always do; 3, 5, 6 or 12 KV heads do not."""
    packing = 32 // (torch.finfo(dtype).bits if dtype.is_floating_point else torch.iinfo(dtype).bits)
    words, rest = divmod(2 * num_kv_heads, packing)
    return rest == 0 and (words in (1, 2, 4, 8) or words % 8 == 0)


def pallas_paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata: AttentionMetadata,
    *,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """torch_xla's ragged paged attention (Pallas, TPU only). The kernel takes the number of real sequences as
    a device tensor, so it is counted on the device (padded sequences have length 0). It rejects a window of 0
    or a cap of 0.0, which unifer reads as "none", so those are passed as None."""
    from torch_xla.experimental.custom_kernel import ragged_paged_attention

    kv_heads = kv_cache.shape[2] // 2
    if not kernel_heads_tile(kv_heads, kv_cache.dtype):
        raise Unsupported(f"backend 'tpu' does not support {kv_heads} KV heads in {kv_cache.dtype}: the Pallas "
                          "ragged paged attention kernel tiles only power-of-two KV head counts (or multiples of 4 "
                          "in float32, of 8 in bfloat16)")
    num_seqs = (metadata.seq_lens > 0).sum().to(torch.int32).reshape(1)
    return ragged_paged_attention(
        query, kv_cache, metadata.seq_lens.to(torch.int32), metadata.block_table.to(torch.int32),
        metadata.query_start_loc.to(torch.int32), num_seqs, sm_scale=scale, sliding_window=sliding_window or None,
        soft_cap=soft_cap or None)
