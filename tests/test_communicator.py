"""The communicator contract: core's torch.distributed collectives, for real on the CPU backend (gloo, one rank
over loopback), and each GPU backend's set-up with torch's distributed and device calls faked."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from unifer_cpu import CPUBackend
from unifer_cuda.backend import CUDABackend


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cpu_collectives_over_gloo():
    backend = CPUBackend()
    comm = backend.communicator()
    assert comm.name == backend.capabilities.communicator == "gloo"
    comm.init(rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{_free_port()}")
    try:
        assert dist.get_backend() == "gloo" and dist.get_world_size() == 1
        x = torch.arange(4.0)
        assert comm.all_reduce(x) is x and x.tolist() == [0.0, 1.0, 2.0, 3.0]
        assert comm.all_gather(torch.ones(2, 3), dim=0).shape == (2, 3)
        comm.barrier()
        comm.init(rank=0, world_size=1)  # joining twice is a no-op
    finally:
        comm.close()
    assert not dist.is_initialized()


def test_cuda_communicator_is_nccl_on_the_local_device(monkeypatch, fake_process_group):
    calls = fake_process_group
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    comm = CUDABackend().communicator()
    assert comm.name == CUDABackend().capabilities.communicator == "nccl"
    comm.init(rank=11, world_size=16)
    assert calls == dict(backend="nccl", init_method="env://", rank=11, world_size=16, device=3)

    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    with pytest.raises(RuntimeError, match="NCCL"):
        comm.init(rank=0, world_size=2)
