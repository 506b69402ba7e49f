"""CUDA graphs for decode steps: one launch replays a whole forward pass, removing per-kernel launch gaps."""

from __future__ import annotations

from collections.abc import Callable

import torch


class CUDAGraphRunner:
    """Captures callables into CUDA graphs that share one memory pool (captured largest first, so each smaller
    graph fits in the memory the larger ones already hold)."""

    def __init__(self, warmup_runs: int = 2) -> None:
        self.warmup_runs = warmup_runs
        self._pool = None
        self.graphs: list[torch.cuda.CUDAGraph] = []

    def capture(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        # Warm-up on a side stream compiles Triton kernels and fills lazy caches outside the capture.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup_runs):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = fn()
        if self._pool is None:
            self._pool = graph.pool()
        self.graphs.append(graph)

        def replay() -> torch.Tensor:
            graph.replay()
            return out

        return replay
