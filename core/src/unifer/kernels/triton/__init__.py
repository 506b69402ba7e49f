"""Portable Triton kernels shared by GPU backends (CUDA, ROCm, XPU), tuned per (vendor, arch) in ``configs``.

Importing this package needs no Triton and touches no device; the kernel modules (attention, kv_write, norm,
rotary, rotary_write_kv, activation) import Triton and are loaded on first use. ``ops()`` returns the ops-table
entries, by name, with the exact signatures of ``unifer.ops.reference``. Matrix products stay in torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from unifer.kernels import triton_available
from unifer.kernels.triton.configs import CONFIGS, AttentionConfig, ElementwiseConfig, KernelConfigs, lookup, register

# op name -> (module, function)
_OPS: dict[str, tuple[str, str]] = {
    "rms_norm": ("norm", "rms_norm"),
    "rotary_embedding": ("rotary", "rotary_embedding"),
    "silu_and_mul": ("activation", "silu_and_mul"),
    "write_kv": ("kv_write", "write_kv"),
    "rotary_write_kv": ("rotary_write_kv", "rotary_write_kv"),
    "paged_attention": ("attention", "paged_attention"),
}
OP_NAMES: tuple[str, ...] = tuple(_OPS)
# The ops that read or write the KV cache: each has a twin for a head-major cache, named with this suffix.
_CACHE_OPS = ("write_kv", "rotary_write_kv", "paged_attention")
_HEAD_MAJOR = "_head_major"


def _require_triton() -> None:
    if not triton_available():
        raise ImportError(
            "unifer.kernels.triton needs the 'triton' package, which is not installed; install it (pip install "
            "triton) or use a backend whose kernels do not need it"
        )


def module(name: str):
    """Import one kernel module (``attention``, ``kv_write``, ``norm``, ``rotary``, ``rotary_write_kv``,
    ``activation``)."""
    _require_triton()
    return importlib.import_module(f"unifer.kernels.triton.{name}")


def ops(head_major: bool = False) -> dict[str, Callable[..., Any]]:
    """op name -> Triton implementation, for a backend's ``native_ops()``; ``head_major``: the cache ops take a
    [2, blocks, kv_heads, block_size, head_dim] cache (each page's positions of one KV head adjacent)."""
    _require_triton()
    suffix = {op: _HEAD_MAJOR if head_major and op in _CACHE_OPS else "" for op in _OPS}
    return {op: getattr(module(mod), fn + suffix[op]) for op, (mod, fn) in _OPS.items()}


__all__ = [
    "CONFIGS",
    "OP_NAMES",
    "AttentionConfig",
    "ElementwiseConfig",
    "KernelConfigs",
    "lookup",
    "module",
    "ops",
    "register",
]
