"""The tensor-parallel communicator over torch.distributed's "xla" backend, at world size 1 (XLA's CPU client
runs no collective across several devices: pytorch/xla#5005), so this checks the wiring, not multi-chip traffic.
Runs in .venv-tpu; skipped where torch_xla is absent."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torch_xla")
os.environ.setdefault("PJRT_DEVICE", "CPU")


def test_collectives_through_the_xla_process_group():
    import torch
    import torch.distributed as dist
    import torch_xla
    from unifer_tpu import TPUBackend

    backend = TPUBackend()
    comm = backend.communicator()
    assert comm.name == backend.capabilities.communicator == "xla"
    comm.init()
    try:
        assert dist.get_backend() == "xla" and dist.get_world_size() == 1
        x = torch.arange(4.0, device=backend.device())
        comm.all_reduce(x)
        gathered = comm.all_gather(torch.ones(2, device=backend.device()), dim=0)
        torch_xla.sync()
        assert x.cpu().tolist() == [0.0, 1.0, 2.0, 3.0] and gathered.cpu().tolist() == [1.0, 1.0]
    finally:
        comm.close()
