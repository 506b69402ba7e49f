"""silu_and_mul: silu(x[..., :d]) * x[..., d:] for x [..., 2d]."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from unifer.kernels.triton.dependent_launch import launch_options, wait_for_predecessor
from unifer.kernels.triton.util import acc_dtype, current_configs, tl_acc
from unifer.pow2 import next_pow2


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, x_stride, out_stride, d, BLOCK: tl.constexpr, ACC: tl.constexpr,
                         PDL: tl.constexpr):
    wait_for_predecessor(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    gate = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * x_stride + d + cols, mask=mask, other=0.0)
    g = gate.to(ACC)
    silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype)  # rounded like torch's silu before the product
    y = silu.to(ACC) * up.to(ACC)
    tl.store(out_ptr + row * out_stride + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """Same signature and semantics as ``unifer.ops.reference.silu_and_mul``."""
    if x.shape[-1] % 2:
        raise ValueError(f"silu_and_mul: last dim {x.shape[-1]} is odd")
    d = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x2.shape[0], d, dtype=x.dtype, device=x.device)
    block = min(next_pow2(d), 1024)
    if x2.shape[0] and d:
        _silu_and_mul_kernel[(x2.shape[0], triton.cdiv(d, block))](
            x2,
            out,
            x2.stride(0),
            out.stride(0),
            d,
            BLOCK=block,
            ACC=tl_acc(acc_dtype(x.dtype)),
            **launch_options(x.device),
            num_warps=current_configs(x.device).elementwise.num_warps,
        )
    return out.reshape(*x.shape[:-1], d)
