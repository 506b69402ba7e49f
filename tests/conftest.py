from __future__ import annotations

import pytest
from checkpoints import ARCHS, make_checkpoint


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """Build each (architecture, options) checkpoint once per session."""
    cache = {}

    def get(architecture: str = "LlamaForCausalLM", **options):
        key = (architecture, tuple(sorted(options.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(architecture.lower())
            cache[key] = make_checkpoint(folder, architecture, **options)
        return cache[key]

    return get


@pytest.fixture(scope="session", params=sorted(ARCHS))
def any_checkpoint(request, checkpoint_factory):
    return request.param, checkpoint_factory(request.param)


@pytest.fixture
def fake_process_group(monkeypatch):
    """torch.distributed with NCCL available and no group yet, recording what a communicator's init asks of it
    (``init_process_group`` kwargs, and the device it selects as ``device``)."""
    import torch
    import torch.distributed as dist

    calls = {}
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.update(kw))
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.update(device=i))
    return calls
