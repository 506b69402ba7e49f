"""Tensor-parallel collectives through torch.distributed's "xla" process-group backend.

Core has no communicator protocol yet; this offers what the other backends' communicators offer (init,
all_reduce, all_gather, barrier) on the default group. The collectives become XLA ops inside the step's graph,
so they cost no extra compilation per step.
"""

from __future__ import annotations

import torch


class XLACommunicator:
    name = "xla"

    def init(self, *, rank: int | None = None, world_size: int | None = None, init_method: str = "xla://") -> None:
        """With ``xla://`` the PJRT runtime supplies rank and world size (one process per TPU chip, e.g. under
        torch_xla's launcher); pass them only with another init method."""
        import torch.distributed as dist
        import torch_xla.distributed.xla_backend  # noqa: F401  (registers the "xla" backend)

        if dist.is_initialized():
            return
        kwargs = {} if rank is None else {"rank": rank, "world_size": world_size}
        dist.init_process_group(self.name, init_method=init_method, **kwargs)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        dist.all_reduce(tensor)
        return tensor

    def all_gather(self, tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=dim)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
