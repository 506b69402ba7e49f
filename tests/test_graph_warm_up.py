"""The graph runners of the cuda and rocm backends warm every step up on one side stream per device, whatever the
number of captures and runners: torch keeps a BLAS workspace (32 MiB on Hopper) for each stream its BLAS handle has
run on until the process ends, so a fresh stream per capture could leave one behind for each stream of torch's pool
of 32: the ~0.94 GiB an H100 process kept, gone with the shared stream (benchmarks/RESULTS.md, eighteenth and
nineteenth sessions). torch.cuda is modelled here: no GPU in CI."""

from __future__ import annotations

import contextlib

import pytest
import torch


class FakeCuda:
    def __init__(self) -> None:
        self.streams = []  # every stream made
        self.ran_on = []  # the stream each warm-up call ran on
        self.current = "default"

    def make_stream(self, device=None, priority=0):
        stream = type("FakeStream", (), {"wait_stream": lambda self, other: None})()
        self.streams.append(stream)
        return stream

    @contextlib.contextmanager
    def on(self, stream):
        previous, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = previous


@pytest.fixture
def cuda(monkeypatch):
    from unifer_cuda import graphs as cuda_graphs
    from unifer_rocm import services as rocm_services

    fake = FakeCuda()
    monkeypatch.setattr(torch.cuda, "Stream", fake.make_stream)
    monkeypatch.setattr(torch.cuda, "stream", fake.on)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: type("S", (), {"wait_stream": lambda s, o: None})())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    for module in (cuda_graphs, rocm_services):
        module.warm_up_stream.cache_clear()
    yield fake
    for module in (cuda_graphs, rocm_services):
        module.warm_up_stream.cache_clear()  # no fake stream outlives the test


def test_cuda_runner_warms_every_capture_up_on_one_stream(cuda):
    from unifer_cuda.graphs import CUDAGraphRunner

    steps = [lambda i=i: cuda.ran_on.append(cuda.current) for i in range(35)]
    for _ in range(2):  # two engines in one process
        runner = CUDAGraphRunner()
        for fn in steps:
            runner._warm_up([fn])  # what capture() does before each capture
        runner._warm_up(steps)  # and capture_many before its one capture
    assert len(cuda.streams) == 1
    assert cuda.ran_on == [cuda.streams[0]] * (2 * (35 + 35) * runner.warmup_runs)


def test_rocm_runner_warms_every_capture_up_on_one_stream(cuda, monkeypatch):
    from unifer_rocm.services import HIPGraphRunner

    class FakeGraph:
        def pool(self):
            return "pool"

        def replay(self):
            pass

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph, pool=None: cuda.on("capture"))
    runner = HIPGraphRunner()
    replays = [runner.capture(lambda i=i: cuda.ran_on.append(cuda.current) or i) for i in range(8)]
    assert [replay() for replay in replays] == list(range(8))
    assert len(cuda.streams) == 1
    assert cuda.ran_on.count(cuda.streams[0]) == 8 * runner.warmup_runs and cuda.ran_on.count("capture") == 8
