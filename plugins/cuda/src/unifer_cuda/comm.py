"""Tensor-parallel collectives among NVIDIA GPUs through torch.distributed's NCCL backend."""

from __future__ import annotations

import torch
from unifer.backends.comm import Communicator


class NCCLCommunicator(Communicator):
    name = "nccl"

    def prepare(self, *, rank: int | None, world_size: int | None, local_rank: int | None) -> None:
        import torch.distributed as dist

        if not dist.is_nccl_available():
            raise RuntimeError("this torch build has no NCCL ('nccl' process-group backend)")
        device = local_rank if local_rank is not None else rank
        if device is not None:
            torch.cuda.set_device(device % torch.cuda.device_count())
