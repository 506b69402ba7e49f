"""NeoX-style (rotate-half) rotary embedding of q [T, H, D] and k [T, KH, D].

``cos_sin_cache`` is [max_positions, D]: cos in the first D/2 columns, sin in the last D/2 (as in the reference).
Returns new tensors; the inputs are not modified.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from unifer.kernels.triton.dependent_launch import launch_options, wait_for_predecessor
from unifer.kernels.triton.util import current_configs
from unifer.pow2 import next_pow2


@triton.jit
def _rotate_heads(
    src,
    dst,
    src_stride,
    dst_stride,
    cos,
    sin,
    NUM_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    H_PAD: tl.constexpr,
    HALF_PAD: tl.constexpr,
):
    h = tl.arange(0, H_PAD)
    d = tl.arange(0, HALF_PAD)
    mask = (h < NUM_HEADS)[:, None] & (d < HALF)[None, :]
    s = src + h[:, None] * src_stride + d[None, :]
    x1 = tl.load(s, mask=mask, other=0.0)
    x2 = tl.load(s + HALF, mask=mask, other=0.0)
    a = x1.to(cos.dtype)
    b = x2.to(cos.dtype)
    o = dst + h[:, None] * dst_stride + d[None, :]
    tl.store(o, (a * cos[None, :] - b * sin[None, :]).to(dst.dtype.element_ty), mask=mask)
    tl.store(o + HALF, (b * cos[None, :] + a * sin[None, :]).to(dst.dtype.element_ty), mask=mask)


@triton.jit
def _cos_sin(pos_ptr, cache_ptr, cache_stride0, t, HALF: tl.constexpr, HALF_PAD: tl.constexpr, ACC: tl.constexpr):
    """Token ``t``'s cos and sin rows (HALF_PAD lanes, zero past HALF)."""
    pos = tl.load(pos_ptr + t).to(tl.int64)
    d = tl.arange(0, HALF_PAD)
    cos = tl.load(cache_ptr + pos * cache_stride0 + d, mask=d < HALF, other=0.0).to(ACC)
    sin = tl.load(cache_ptr + pos * cache_stride0 + HALF + d, mask=d < HALF, other=0.0).to(ACC)
    return cos, sin


@triton.jit
def _rotary_kernel(
    pos_ptr,
    q_ptr,
    k_ptr,
    cache_ptr,
    qo_ptr,
    ko_ptr,
    q_stride0,
    q_stride1,
    k_stride0,
    k_stride1,
    qo_stride0,
    qo_stride1,
    ko_stride0,
    ko_stride1,
    cache_stride0,
    NUM_Q_HEADS: tl.constexpr,
    NUM_K_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    QH_PAD: tl.constexpr,
    KH_PAD: tl.constexpr,
    HALF_PAD: tl.constexpr,
    ACC: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_predecessor(PDL)
    t = tl.program_id(0).to(tl.int64)
    cos, sin = _cos_sin(pos_ptr, cache_ptr, cache_stride0, t, HALF, HALF_PAD, ACC)
    _rotate_heads(
        q_ptr + t * q_stride0,
        qo_ptr + t * qo_stride0,
        q_stride1,
        qo_stride1,
        cos,
        sin,
        NUM_Q_HEADS,
        HALF,
        QH_PAD,
        HALF_PAD,
    )
    _rotate_heads(
        k_ptr + t * k_stride0,
        ko_ptr + t * ko_stride0,
        k_stride1,
        ko_stride1,
        cos,
        sin,
        NUM_K_HEADS,
        HALF,
        KH_PAD,
        HALF_PAD,
    )


def check_rotary_inputs(query: torch.Tensor, key: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    if query.dim() != 3 or key.dim() != 3 or query.shape[2] != key.shape[2] or query.shape[0] != key.shape[0]:
        raise ValueError(f"rotary_embedding: query {tuple(query.shape)} and key {tuple(key.shape)}")
    head_dim = query.shape[2]
    if cos_sin_cache.shape[-1] != head_dim or head_dim % 2:
        raise ValueError(f"rotary_embedding: cos_sin_cache {tuple(cos_sin_cache.shape)} for head_dim {head_dim}")


def rotary_embedding(
    positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same signature and semantics as ``unifer.ops.reference.rotary_embedding``."""
    check_rotary_inputs(query, key, cos_sin_cache)
    head_dim = query.shape[2]
    query = query if query.stride(2) == 1 else query.contiguous()
    key = key if key.stride(2) == 1 else key.contiguous()
    cache = cos_sin_cache if cos_sin_cache.stride(1) == 1 else cos_sin_cache.contiguous()
    q_out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    k_out = torch.empty(key.shape, dtype=key.dtype, device=key.device)
    num_tokens = positions.shape[0]
    half = head_dim // 2
    wide = torch.float64 in (cache.dtype, query.dtype)
    if num_tokens:
        _rotary_kernel[(num_tokens,)](
            positions,
            query,
            key,
            cache,
            q_out,
            k_out,
            query.stride(0),
            query.stride(1),
            key.stride(0),
            key.stride(1),
            q_out.stride(0),
            q_out.stride(1),
            k_out.stride(0),
            k_out.stride(1),
            cache.stride(0),
            NUM_Q_HEADS=query.shape[1],
            NUM_K_HEADS=key.shape[1],
            HALF=half,
            QH_PAD=next_pow2(query.shape[1]),
            KH_PAD=next_pow2(key.shape[1]),
            HALF_PAD=next_pow2(half),
            ACC=tl.float64 if wide else tl.float32,
            **launch_options(query.device),
            num_warps=current_configs(query.device).elementwise.num_warps,
        )
    return q_out, k_out
