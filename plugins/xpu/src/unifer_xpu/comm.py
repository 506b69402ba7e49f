"""Tensor-parallel communication among Intel GPUs: torch.distributed's XCCL, else Intel's oneCCL bindings.

PyTorch ships XCCL in its XPU builds (2.8+: ``torch.distributed.is_xccl_available()``); older setups get the
same collectives from ``oneccl_bindings_for_pytorch``, which registers a process-group backend named "ccl"
when imported. Core has no communicator protocol yet, so this object offers the few collectives tensor
parallelism needs, on torch.distributed's default group.
"""

from __future__ import annotations

import importlib.util

import torch


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


class XPUCommunicator:
    def __init__(self, backend: str) -> None:
        if backend not in ("xccl", "ccl"):
            raise ValueError(f"unknown XPU communicator {backend!r}; expected 'xccl' or 'ccl'")
        self.backend = backend

    def init_process_group(self, *, rank: int, world_size: int, init_method: str = "env://") -> None:
        if self.backend == "ccl":
            import oneccl_bindings_for_pytorch  # noqa: F401  (registers the "ccl" process-group backend)
        torch.distributed.init_process_group(backend=self.backend, rank=rank, world_size=world_size,
                                             init_method=init_method)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        torch.distributed.all_reduce(tensor)
        return tensor

    def all_gather(self, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=dim)

    def barrier(self) -> None:
        torch.distributed.barrier()
