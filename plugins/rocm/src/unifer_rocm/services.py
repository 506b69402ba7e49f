"""Optional services of the ROCm backend: decode-step graphs (HIP graphs) and tensor-parallel collectives (RCCL).

ROCm builds of torch keep CUDA's Python names: ``torch.cuda.CUDAGraph`` records a hipGraph, and
torch.distributed's "nccl" process-group backend is RCCL. Neither can be exercised without an AMD GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from unifer.backends.comm import Communicator


@functools.cache
def warm_up_stream(device: int) -> torch.cuda.Stream:
    """One side stream per device for every warm-up: torch keeps a BLAS workspace for each stream its BLAS handle
    has run on, until the process ends, so a fresh stream per capture left one behind each."""
    return torch.cuda.Stream(device)


class HIPGraphRunner:
    """``capture(fn) -> replay`` (see ``Backend.graph_runner``). Graphs share one memory pool; the runner captures
    the largest batch first, so later (smaller) graphs reuse its memory."""

    def __init__(self, warmup_runs: int = 2) -> None:
        self.warmup_runs = warmup_runs
        self.pool = None
        self.graphs: list = []

    def capture(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        # Triton compiles on first call, which must not happen inside the capture: warm up on a side stream.
        side = warm_up_stream(torch.cuda.current_device())
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


class RCCLCommunicator(Communicator):
    """Tensor-parallel collectives through torch.distributed's "nccl" backend, which is RCCL on ROCm."""

    name = "nccl"

    def prepare(self, *, rank: int | None, world_size: int | None, local_rank: int | None) -> None:
        import torch.distributed as dist

        if not dist.is_nccl_available():
            raise RuntimeError("this torch build has no RCCL ('nccl' process-group backend); install a ROCm build")
        device = local_rank if local_rank is not None else rank
        if device is not None:
            torch.cuda.set_device(device)
