"""The CUDA backend's probe: never raises, never initialises CUDA where there is none, never claims ROCm."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

try:
    import unifer_cuda  # noqa: F401
except ImportError:  # not installed in this environment: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "cuda" / "src"))

from unifer_cuda import CUDABackend  # noqa: E402


def test_identity_and_capabilities():
    b = CUDABackend()
    assert (b.name, b.device_type, b.priority) == ("cuda", "cuda", 100)
    caps = b.capabilities
    assert set(caps.dtypes) == {"bfloat16", "float16", "float32"}
    assert caps.head_sizes == (64, 80, 96, 128, 256)
    assert caps.block_sizes == (16, 32)
    assert caps.max_gqa_ratio == 16 and caps.graph_capture and caps.communicator == "nccl"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_probe_reports_unavailable_on_this_machine():
    avail = CUDABackend().probe()
    assert not avail.ok
    assert avail.reason


def test_probe_refuses_rocm_builds(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.2.0", raising=False)
    monkeypatch.setattr(torch.version, "cuda", None, raising=False)

    def boom(*a, **k):
        raise AssertionError("probe must not ask a ROCm build of torch for CUDA devices")

    monkeypatch.setattr(torch.cuda, "is_available", boom)
    avail = CUDABackend().probe()
    assert not avail.ok and "ROCm" in avail.reason


def test_probe_does_not_touch_cuda_on_a_cpu_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None, raising=False)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)

    def boom(*a, **k):
        raise AssertionError("probe must not initialise CUDA on a CPU-only torch")

    monkeypatch.setattr(torch.cuda, "is_available", boom)
    avail = CUDABackend().probe()
    assert not avail.ok and "not built with CUDA" in avail.reason


def test_probe_never_raises(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.8", raising=False)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)

    def broken():
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(torch.cuda, "is_available", broken)
    avail = CUDABackend().probe()
    assert not avail.ok and "driver exploded" in avail.reason


def test_plugin_registers_the_backend():
    from unifer_cuda import plugin

    added = []

    class Registry:
        def add(self, backend):
            added.append(backend)

    plugin.unifer_register_backends(registry=Registry())
    assert [b.name for b in added] == ["cuda"]
