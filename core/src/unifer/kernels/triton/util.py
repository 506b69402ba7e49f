"""Small helpers shared by the Triton kernel wrappers (host side)."""

from __future__ import annotations

import functools

import torch

from unifer.kernels.triton.configs import KernelConfigs, lookup


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in float32, or float64 for float64 inputs (as the reference does)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_acc(dtype: torch.dtype):
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype) -> str:
    """IEEE products for every dtype: float32/float64 lose nothing to TF32, 16-bit inputs compile to the same MMA
    either way on CUDA, and HIP targets without XF32 (gfx90a, gfx950) refuse "tf32" outright."""
    return "ieee"


@functools.cache
def _configs_for(device_type: str, index: int | None) -> KernelConfigs:
    try:
        from triton.runtime import driver

        target = driver.active.get_current_target()
        return lookup(target.backend, target.arch)
    except Exception:  # interpreter, no driver, ...: the portable defaults
        return lookup(None, None)


def current_configs(device: torch.device) -> KernelConfigs:
    """The launch configs of the (vendor, arch) that Triton targets for ``device``."""
    if device.type == "cpu":
        return lookup(None, None)
    return _configs_for(device.type, device.index)
