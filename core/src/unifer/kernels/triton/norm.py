"""RMSNorm over the last dim, optionally fused with the residual add (returns (norm(x + r), x + r))."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from unifer.kernels.triton.dependent_launch import launch_options, wait_for_predecessor
from unifer.kernels.triton.util import acc_dtype, tl_acc
from unifer.pow2 import next_pow2


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    sum_ptr,
    x_stride,
    res_stride,
    out_stride,
    sum_stride,
    n_cols,
    eps,
    BLOCK: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACC: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_predecessor(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * res_stride + cols, mask=mask, other=0.0)
        # Rounded to the sum's dtype, as x + residual is in the reference.
        x = (x.to(ACC) + r.to(ACC)).to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * sum_stride + cols, x, mask=mask)
    h = x.to(ACC)
    var = tl.sum(h * h, axis=0) / n_cols
    h = h / tl.sqrt(var + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(ACC)
    y = w * h.to(x.dtype).to(ACC)
    tl.store(out_ptr + row * out_stride + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same signature and semantics as ``unifer.ops.reference.rms_norm``."""
    shape = x.shape
    n = shape[-1]
    if weight.shape != (n,):
        raise ValueError(f"rms_norm: weight {tuple(weight.shape)} does not match hidden size {n}")
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    sum_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    out = torch.empty(x2.shape, dtype=torch.promote_types(weight.dtype, sum_dtype), device=x.device)
    if residual is not None:
        if residual.shape != shape:
            raise ValueError(f"rms_norm: residual {tuple(residual.shape)} does not match x {tuple(shape)}")
        r2 = residual.reshape(-1, n)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
        summed = torch.empty(x2.shape, dtype=sum_dtype, device=x.device)
    else:
        r2 = summed = x2  # unused
    block = next_pow2(n)
    if x2.shape[0]:
        _rms_norm_kernel[(x2.shape[0],)](
            x2,
            r2,
            weight,
            out,
            summed,
            x2.stride(0),
            r2.stride(0),
            out.stride(0),
            summed.stride(0),
            n,
            float(eps),
            BLOCK=block,
            HAS_RESIDUAL=residual is not None,
            ACC=tl_acc(acc_dtype(sum_dtype)),
            **launch_options(x.device),
            num_warps=min(max(block // 256, 1), 16) if x.device.type != "cpu" else 1,
        )
    out = out.reshape(shape)
    return out if residual is None else (out, summed.reshape(shape))
