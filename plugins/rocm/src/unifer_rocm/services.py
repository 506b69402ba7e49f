"""Optional services of the ROCm backend: decode-step graphs (HIP graphs) and tensor-parallel collectives (RCCL).

ROCm builds of torch keep CUDA's Python names: ``torch.cuda.CUDAGraph`` records a hipGraph, and
torch.distributed's "nccl" process-group backend is RCCL. Neither can be exercised without an AMD GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class HIPGraphRunner:
    """``capture(fn) -> replay`` (see ``Backend.graph_runner``). Graphs share one memory pool; the runner captures
    the largest batch first, so later (smaller) graphs reuse its memory."""

    def __init__(self, warmup_runs: int = 2) -> None:
        self.warmup_runs = warmup_runs
        self.pool = None
        self.graphs: list = []

    def capture(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        # Triton compiles on first call, which must not happen inside the capture: warm up on a side stream.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup_runs):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = fn()
        if self.pool is None:
            self.pool = graph.pool()
        self.graphs.append(graph)

        def replay() -> torch.Tensor:
            graph.replay()
            return output

        return replay


class RCCLCommunicator:
    """Tensor-parallel collectives through torch.distributed's "nccl" backend, which is RCCL on ROCm."""

    name = "nccl"

    def init(self, *, rank: int, world_size: int, local_rank: int | None = None,
             init_method: str = "env://") -> None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_nccl_available():
            raise RuntimeError("this torch build has no RCCL ('nccl' process-group backend); install a ROCm build")
        torch.cuda.set_device(rank if local_rank is None else local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend=self.name, init_method=init_method, rank=rank, world_size=world_size)

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
