"""rotary_write_kv: rotary embedding of q and k fused with the KV-cache write of the rotated k and of v.

One program per token: it rotates the token's query heads into a new tensor and its key heads straight into the
token's cache slot, and copies its value heads there; slot -1 (padding) writes nothing. Against the two separate
kernels this saves a launch per layer and the round trip of the rotated key through memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from unifer.kernels.triton.dependent_launch import launch_options, wait_for_predecessor
from unifer.kernels.triton.kv_write import _copy_heads, check_kv_inputs
from unifer.kernels.triton.rotary import _cos_sin, _rotate_heads, check_rotary_inputs
from unifer.kernels.triton.util import current_configs
from unifer.pow2 import next_pow2


@triton.jit
def _rotary_write_kv_kernel(
    pos_ptr,
    q_ptr,
    k_ptr,
    v_ptr,
    cos_sin_ptr,
    qo_ptr,
    kv_ptr,
    slot_ptr,
    q_stride0,
    q_stride1,
    k_stride0,
    k_stride1,
    v_stride0,
    v_stride1,
    qo_stride0,
    qo_stride1,
    cos_sin_stride0,
    kv_stride0,
    kv_stride1,
    kv_stride2,
    kv_stride3,
    NUM_Q_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    QH_PAD: tl.constexpr,
    KH_PAD: tl.constexpr,
    HALF_PAD: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    ACC: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_predecessor(PDL)
    t = tl.program_id(0).to(tl.int64)
    cos, sin = _cos_sin(pos_ptr, cos_sin_ptr, cos_sin_stride0, t, HALF, HALF_PAD, ACC)
    _rotate_heads(q_ptr + t * q_stride0, qo_ptr + t * qo_stride0, q_stride1, qo_stride1, cos, sin,
                  NUM_Q_HEADS, HALF, QH_PAD, HALF_PAD)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        dst = kv_ptr + (slot // BLOCK_SIZE) * kv_stride1 + (slot % BLOCK_SIZE) * kv_stride2
        _rotate_heads(k_ptr + t * k_stride0, dst, k_stride1, kv_stride3, cos, sin, NUM_KV_HEADS, HALF, KH_PAD,
                      HALF_PAD)
        _copy_heads(v_ptr + t * v_stride0, dst + kv_stride0, v_stride1, kv_stride3, NUM_KV_HEADS, HEAD_DIM, KH_PAD,
                    HEAD_PAD)


def rotary_write_kv(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    cos_sin_cache: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> torch.Tensor:
    """Same signature and semantics as ``unifer.ops.reference.rotary_write_kv``."""
    check_rotary_inputs(query, key, cos_sin_cache)
    check_kv_inputs(key, value, kv_cache)
    if positions.shape[0] != query.shape[0] or slot_mapping.shape[0] != query.shape[0]:
        raise ValueError(f"rotary_write_kv: {query.shape[0]} tokens, {positions.shape[0]} positions and "
                         f"{slot_mapping.shape[0]} slots")
    query = query if query.stride(2) == 1 else query.contiguous()
    key = key if key.stride(2) == 1 else key.contiguous()
    value = value if value.stride(2) == 1 else value.contiguous()
    cos_sin = cos_sin_cache if cos_sin_cache.stride(1) == 1 else cos_sin_cache.contiguous()
    q_out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    num_tokens = query.shape[0]
    if num_tokens == 0:
        return q_out
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    half = head_dim // 2
    _rotary_write_kv_kernel[(num_tokens,)](
        positions,
        query,
        key,
        value,
        cos_sin,
        q_out,
        kv_cache,
        slot_mapping,
        query.stride(0),
        query.stride(1),
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        q_out.stride(0),
        q_out.stride(1),
        cos_sin.stride(0),
        kv_cache.stride(0),
        kv_cache.stride(1),
        kv_cache.stride(2),
        kv_cache.stride(3),
        NUM_Q_HEADS=query.shape[1],
        NUM_KV_HEADS=num_kv_heads,
        HALF=half,
        HEAD_DIM=head_dim,
        QH_PAD=next_pow2(query.shape[1]),
        KH_PAD=next_pow2(num_kv_heads),
        HALF_PAD=next_pow2(half),
        HEAD_PAD=next_pow2(head_dim),
        BLOCK_SIZE=block_size,
        ACC=tl.float64 if torch.float64 in (cos_sin.dtype, query.dtype) else tl.float32,
        **launch_options(query.device),
        num_warps=current_configs(query.device).elementwise.num_warps,
    )
    return q_out


def rotary_write_kv_head_major(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               cos_sin_cache: torch.Tensor, kv_cache: torch.Tensor,
                               slot_mapping: torch.Tensor) -> torch.Tensor:
    """``rotary_write_kv`` into a head-major cache, [2, blocks, KH, block_size, D]."""
    return rotary_write_kv(positions, query, key, value, cos_sin_cache, kv_cache.transpose(2, 3), slot_mapping)
