"""The tensor-parallel communicator a backend returns from ``Backend.communicator()``.

Collectives run on torch.distributed's default process group, so they are the same for every device: a backend
subclasses ``Communicator`` to name its process-group backend (``name``, as torch.distributed knows it) and, in
``prepare``, to do what must happen before the group exists (pick the local device, import the bindings that
register the backend, refuse with a clear error when they are missing).
"""

from __future__ import annotations

from typing import ClassVar

import torch


class Communicator:
    name: ClassVar[str] = "gloo"  # the torch.distributed backend
    default_init_method: ClassVar[str] = "env://"

    def prepare(self, *, rank: int | None, world_size: int | None, local_rank: int | None) -> None:
        """Device set-up before the process group is created. Raise RuntimeError naming what is missing."""

    def init(self, *, rank: int | None = None, world_size: int | None = None, local_rank: int | None = None,
             init_method: str | None = None) -> None:
        """Join the default process group (once per process). Without ``rank`` the init method supplies rank and
        world size (e.g. the ``env://`` variables of torchrun)."""
        import torch.distributed as dist

        if not dist.is_available():
            raise RuntimeError(f"torch {torch.__version__} is built without torch.distributed")
        self.prepare(rank=rank, world_size=world_size, local_rank=local_rank)
        if dist.is_initialized():
            return
        kwargs = {} if rank is None else {"rank": rank, "world_size": world_size}
        dist.init_process_group(backend=self.name, init_method=init_method or self.default_init_method, **kwargs)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place; returns ``tensor``."""
        torch.distributed.all_reduce(tensor)
        return tensor

    def all_gather(self, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's ``tensor``, concatenated along ``dim`` in rank order."""
        parts = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=dim)

    def barrier(self) -> None:
        torch.distributed.barrier()

    def close(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
