"""CUDA graphs for decode steps: one launch replays a whole forward pass, removing per-kernel launch gaps."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import weakref
from collections.abc import Callable

import torch

from unifer_cuda import graph_split

logger = logging.getLogger(__name__)

# "0" makes one capture per graph, as before contract 1.5: a way around a driver that cuts graphs wrongly without
# refusing, which the markers' checks would not catch.
ONE_CAPTURE_ENV = "UNIFER_CUDA_ONE_CAPTURE"
# What the driver (graph_split.DriverError), ctypes or torch's capture may raise: a reason to capture one by one,
# never to fail the engine. A step's own error shows again when it is captured alone.
_REFUSALS = (RuntimeError, ctypes.ArgumentError, TypeError, ValueError, OSError, AttributeError)


@functools.cache
def warm_up_stream(device: int) -> torch.cuda.Stream:
    """One side stream per device for every warm-up. torch keeps a cuBLAS workspace (32 MiB on Hopper) for each
    stream cuBLAS has run on, until the process ends, outside the KV cache's budget: a fresh stream per capture
    left one behind each, up to the 32 of torch's stream pool."""
    return torch.cuda.Stream(device)


class CUDAGraphRunner:
    """Captures callables into CUDA graphs that share one memory pool (captured largest first, so each smaller
    graph fits in the memory the larger ones already hold).

    ``capture_many`` makes one stream capture for all its callables and cuts it into a graph each
    (``unifer_cuda.graph_split`` says why); where a step of that is refused, or with ``UNIFER_CUDA_ONE_CAPTURE=0``,
    it captures them one by one."""

    def __init__(self, warmup_runs: int = 2) -> None:
        self.warmup_runs = warmup_runs
        self._pool = None
        self.graphs: list[torch.cuda.CUDAGraph] = []

    def _warm_up(self, fns: list[Callable[[], torch.Tensor]]) -> None:
        # On a side stream: compiles Triton kernels and fills lazy caches outside the capture.
        stream = warm_up_stream(torch.cuda.current_device())
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for fn in fns:
                for _ in range(self.warmup_runs):
                    fn()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()

    def capture(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        self._warm_up([fn])
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

    def capture_many(self, fns: list[Callable[[], torch.Tensor]]) -> list[Callable[[], torch.Tensor]]:
        if os.environ.get(ONE_CAPTURE_ENV, "1") != "0" and 2 <= len(fns) <= graph_split.MAX_MARKERS:
            try:
                return self._capture_once(fns)
            except _REFUSALS as exc:
                logger.warning("capturing %d CUDA graphs one by one: %s", len(fns), exc)
        return [self.capture(fn) for fn in fns]

    def _capture_once(self, fns: list[Callable[[], torch.Tensor]]) -> list[Callable[[], torch.Tensor]]:
        driver = graph_split.Driver()
        whole = torch.cuda.CUDAGraph(keep_graph=True)  # torch 2.7 and later
        self._warm_up(fns)
        marker = torch.zeros(graph_split.MARKER_BYTES, dtype=torch.uint8, device="cuda")
        outs = []
        with torch.cuda.graph(whole, pool=self._pool):
            stream = torch.cuda.current_stream().cuda_stream
            for i, fn in enumerate(fns):
                driver.mark(marker.data_ptr(), i + 1, stream)
                outs.append(fn())
        if self._pool is None:
            self._pool = whole.pool()
        self.graphs.append(whole)
        cut = graph_split.split(driver, whole.raw_cuda_graph(), marker.data_ptr(), len(fns))
        executables = []
        try:
            for graph in cut:
                executables.append(driver.instantiate(graph))
        except Exception:
            graph_split.destroy(driver, executables, cut)
            raise
        held = _CutGraphs(whole, driver, executables, cut)
        return [held.replayer(i, out) for i, out in enumerate(outs)]


class _CutGraphs:
    """The executables cut from one capture, and the captured graph whose memory pool they run in: the replays
    hold this, so the pool lives while any of them can still be called, and the executables go with the last."""

    def __init__(self, whole: torch.cuda.CUDAGraph, driver, executables: list[int], graphs: list[int]) -> None:
        self.whole, self.driver, self.executables = whole, driver, executables
        # Not at exit: the driver may be torn down by then, and the process's end frees them anyway.
        weakref.finalize(self, graph_split.destroy, driver, executables, graphs).atexit = False

    def replayer(self, i: int, out: torch.Tensor) -> Callable[[], torch.Tensor]:
        def replay() -> torch.Tensor:
            self.driver.launch(self.executables[i], torch.cuda.current_stream().cuda_stream)
            return out

        return replay
