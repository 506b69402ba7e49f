"""write_kv: scatter new K and V rows [T, KH, D] into the paged cache at flat slots; slot -1 is skipped."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from unifer.kernels.triton.dependent_launch import launch_options, wait_for_predecessor
from unifer.kernels.triton.util import current_configs
from unifer.pow2 import next_pow2


@triton.jit
def _copy_heads(src, dst, src_stride, dst_stride, NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                H_PAD: tl.constexpr, D_PAD: tl.constexpr):
    """Copies one token's NUM_HEADS rows of HEAD_DIM (head strides as given), converting to dst's dtype."""
    h = tl.arange(0, H_PAD)
    d = tl.arange(0, D_PAD)
    mask = (h < NUM_HEADS)[:, None] & (d < HEAD_DIM)[None, :]
    x = tl.load(src + h[:, None] * src_stride + d[None, :], mask=mask)
    tl.store(dst + h[:, None] * dst_stride + d[None, :], x.to(dst.dtype.element_ty), mask=mask)


@triton.jit
def _write_kv_kernel(
    key_ptr,
    value_ptr,
    kv_ptr,
    slot_ptr,
    k_stride0,
    k_stride1,
    v_stride0,
    v_stride1,
    kv_stride0,
    kv_stride1,
    kv_stride2,
    kv_stride3,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    KH_PAD: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_predecessor(PDL)
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:
        return
    dst = kv_ptr + (slot // BLOCK_SIZE) * kv_stride1 + (slot % BLOCK_SIZE) * kv_stride2
    _copy_heads(key_ptr + t * k_stride0, dst, k_stride1, kv_stride3, NUM_KV_HEADS, HEAD_DIM, KH_PAD, HEAD_PAD)
    _copy_heads(value_ptr + t * v_stride0, dst + kv_stride0, v_stride1, kv_stride3, NUM_KV_HEADS, HEAD_DIM, KH_PAD,
                HEAD_PAD)


def check_kv_inputs(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor) -> None:
    if kv_cache.dim() != 5 or kv_cache.shape[0] != 2 or key.shape != value.shape or key.dim() != 3:
        raise ValueError(f"write_kv: key {tuple(key.shape)}, value {tuple(value.shape)}, cache {tuple(kv_cache.shape)}")
    if key.shape[1:] != kv_cache.shape[3:]:
        raise ValueError(f"write_kv: key {tuple(key.shape)} does not match cache {tuple(kv_cache.shape)}")
    if kv_cache.stride(4) != 1:
        raise ValueError("kv_cache needs a unit stride in its last (head_dim) dimension")


def write_kv(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Same signature and semantics as ``unifer.ops.reference.write_kv`` (in place)."""
    check_kv_inputs(key, value, kv_cache)
    key = key if key.stride(2) == 1 else key.contiguous()
    value = value if value.stride(2) == 1 else value.contiguous()
    num_tokens = slot_mapping.shape[0]
    if num_tokens == 0:
        return
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    _write_kv_kernel[(num_tokens,)](
        key,
        value,
        kv_cache,
        slot_mapping,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        kv_cache.stride(0),
        kv_cache.stride(1),
        kv_cache.stride(2),
        kv_cache.stride(3),
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        KH_PAD=next_pow2(num_kv_heads),
        HEAD_PAD=next_pow2(head_dim),
        BLOCK_SIZE=block_size,
        **launch_options(key.device),
        num_warps=current_configs(key.device).elementwise.num_warps,
    )


def write_kv_head_major(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                        slot_mapping: torch.Tensor) -> None:
    """``write_kv`` into a head-major cache, [2, blocks, KH, block_size, D]."""
    write_kv(key, value, kv_cache.transpose(2, 3), slot_mapping)
