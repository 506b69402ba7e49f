"""Tensor-parallel communication among Intel GPUs: torch.distributed's XCCL, else Intel's oneCCL bindings.

PyTorch ships XCCL in its XPU builds (2.8+: ``torch.distributed.is_xccl_available()``); older setups get the
same collectives from ``oneccl_bindings_for_pytorch``, which registers a process-group backend named "ccl"
when imported.
"""

from __future__ import annotations

import importlib.util

import torch
from unifer.backends.comm import Communicator


def choose() -> tuple[str | None, str]:
    """(process-group backend name or None, why). Cheap: imports nothing new."""
    try:
        dist = torch.distributed
        if not dist.is_available():
            return None, f"torch {torch.__version__} is built without torch.distributed"
        is_xccl = getattr(dist, "is_xccl_available", None)
        if is_xccl is not None and is_xccl():
            return "xccl", "XCCL (torch.distributed)"
        if importlib.util.find_spec("oneccl_bindings_for_pytorch") is not None:
            return "ccl", "oneCCL (oneccl_bindings_for_pytorch)"
    except Exception as exc:  # the choice is reported, never fatal
        return None, f"communicator check failed: {type(exc).__name__}: {exc}"
    return None, "neither torch.distributed XCCL nor oneccl_bindings_for_pytorch is available"


class XPUCommunicator(Communicator):
    def __init__(self, backend: str) -> None:
        if backend not in ("xccl", "ccl"):
            raise ValueError(f"unknown XPU communicator {backend!r}; expected 'xccl' or 'ccl'")
        self.name = self.backend = backend

    def prepare(self, *, rank: int | None, world_size: int | None, local_rank: int | None) -> None:
        if self.backend == "ccl":
            import oneccl_bindings_for_pytorch  # noqa: F401  (registers the "ccl" process-group backend)
