"""The ROCm backend's probe and services, with AMD, NVIDIA and CPU-only machines faked at the torch boundary
(torch.version and torch.cuda, which ROCm builds of torch also answer)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
for plugin in ("rocm", "cuda"):  # not installed in this environment: use the source tree
    try:
        __import__(f"unifer_{plugin}")
    except ImportError:
        sys.path.insert(0, str(ROOT / "plugins" / plugin / "src"))

from unifer_cuda import CUDABackend  # noqa: E402
from unifer_rocm import ARCHS, ROCmBackend  # noqa: E402

MI300X = SimpleNamespace(name="AMD Instinct MI300X", gcnArchName="gfx942:sramecc+:xnack-", total_memory=192 << 30)
MI250X = SimpleNamespace(name="AMD Instinct MI250X", gcnArchName="gfx90a:sramecc+:xnack-", total_memory=64 << 30)
MI355X = SimpleNamespace(name="AMD Instinct MI355X", gcnArchName="gfx950:sramecc+:xnack-", total_memory=288 << 30)
RX7900 = SimpleNamespace(name="AMD Radeon RX 7900 XTX", gcnArchName="gfx1100", total_memory=24 << 30)


def _boom(*args, **kwargs):
    raise AssertionError("the probe must not ask this torch build for devices")


@pytest.fixture(autouse=True)
def _hardware_mode(monkeypatch):
    monkeypatch.delenv("UNIFER_ROCM_INTERPRET", raising=False)


def fake_rocm(monkeypatch, *devices, hip="6.3.42131", capability=(9, 4)):
    """A ROCm build of torch seeing ``devices``; ROCm torch reports a CUDA-like capability (9.4 for gfx942)."""
    monkeypatch.setattr(torch.version, "hip", hip, raising=False)
    monkeypatch.setattr(torch.version, "cuda", None, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(devices))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(devices))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: devices[i])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: devices[i].name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: capability)


@pytest.mark.parametrize("props, arch, family", [(MI250X, "gfx90a", "CDNA2"), (MI300X, "gfx942", "CDNA3"),
                                                 (MI355X, "gfx950", "CDNA4")])
def test_probe_claims_cdna_gpus_by_arch(monkeypatch, props, arch, family):
    fake_rocm(monkeypatch, props, props)
    b = ROCmBackend()
    avail = b.probe()
    assert avail.ok, avail.reason
    assert f"2 x {props.name}" in avail.reason and arch in avail.reason and family in avail.reason
    assert b.arch == arch
    assert b.capabilities is ARCHS[arch].capabilities
    assert b.capabilities.extra["arch"] == arch and b.capabilities.extra["wavefront"] == 64
    assert (b.name, b.device_type, b.priority) == ("rocm", "cuda", 100)
    assert b.device(1) == torch.device("cuda", 1)


def test_capabilities_are_declared_per_arch():
    assert set(ARCHS) == {"gfx90a", "gfx942", "gfx950"}
    for gfx, a in ARCHS.items():
        caps = a.capabilities
        assert caps.extra["arch"] == gfx and caps.extra["lds_bytes"] == a.lds_bytes
        assert set(caps.dtypes) == {"bfloat16", "float16", "float32"}
        assert caps.communicator == "nccl" and caps.graph_capture
    assert ARCHS["gfx950"].lds_bytes > ARCHS["gfx942"].lds_bytes == ARCHS["gfx90a"].lds_bytes


@pytest.mark.parametrize("props", [RX7900, SimpleNamespace(name="AMD Instinct MI100", gcnArchName="gfx908")])
def test_probe_refuses_other_amd_archs(monkeypatch, props):
    fake_rocm(monkeypatch, props)
    b = ROCmBackend()
    avail = b.probe()
    assert not avail.ok and props.gcnArchName in avail.reason and "gfx942" in avail.reason
    assert b.arch is None


def test_probe_refuses_mixed_archs(monkeypatch):
    fake_rocm(monkeypatch, MI300X, MI250X)
    avail = ROCmBackend().probe()
    assert not avail.ok and "gfx90a, gfx942" in avail.reason and "HIP_VISIBLE_DEVICES" in avail.reason


def test_probe_refuses_a_device_without_gfx_name(monkeypatch):
    fake_rocm(monkeypatch, SimpleNamespace(name="?", gcnArchName=""))
    avail = ROCmBackend().probe()
    assert not avail.ok and "no gfx architecture" in avail.reason


def test_probe_never_claims_nvidia(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.version, "cuda", "12.8", raising=False)
    for name in ("is_available", "device_count", "get_device_properties"):
        monkeypatch.setattr(torch.cuda, name, _boom)
    avail = ROCmBackend().probe()
    assert not avail.ok and "CUDA 12.8 build" in avail.reason and "not a ROCm" in avail.reason


def test_probe_never_claims_cpu_only(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.version, "cuda", None, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", _boom)
    avail = ROCmBackend().probe()
    assert not avail.ok and "CPU-only" in avail.reason


def test_probe_on_rocm_without_devices(monkeypatch):
    fake_rocm(monkeypatch)
    avail = ROCmBackend().probe()
    assert not avail.ok and "no AMD GPU visible" in avail.reason


def test_probe_never_raises(monkeypatch):
    fake_rocm(monkeypatch, MI300X)

    def broken(i=0):
        raise RuntimeError("hipErrorNoDevice")

    monkeypatch.setattr(torch.cuda, "get_device_properties", broken)
    avail = ROCmBackend().probe()
    assert not avail.ok and "hipErrorNoDevice" in avail.reason


def test_probe_needs_tritons_amd_backend(monkeypatch):
    import triton.backends

    fake_rocm(monkeypatch, MI300X)
    monkeypatch.setattr(triton.backends, "backends", {k: v for k, v in triton.backends.backends.items()
                                                      if k != "amd"})
    avail = ROCmBackend().probe()
    assert not avail.ok and "no AMD backend" in avail.reason


@pytest.mark.parametrize("props", [MI250X, MI300X, MI355X])
def test_cuda_backend_refuses_an_amd_device(monkeypatch, props):
    # Everything about the device looks usable through torch.cuda, capability 9.4 included; only the build says
    # HIP. The CUDA backend must refuse it and must not even ask for devices.
    fake_rocm(monkeypatch, props)
    assert torch.cuda.is_available() and torch.cuda.get_device_capability(0) >= (8, 0)
    monkeypatch.setattr(torch.cuda, "is_available", _boom)
    avail = CUDABackend().probe()
    assert not avail.ok and "ROCm" in avail.reason


def test_auto_selection_on_an_amd_machine_picks_rocm(monkeypatch):
    from unifer.backends import BackendRegistry, select_backend

    fake_rocm(monkeypatch, MI300X)
    registry = BackendRegistry()
    for b in (CUDABackend(), ROCmBackend()):
        registry.add(b)
    registry.probe_all()
    assert select_backend(registry=registry).name == "rocm"


# --- verification mode (Triton interpreter on CPU tensors) --------------------------------------------------------
def test_interpreter_mode_needs_triton_interpret(monkeypatch):
    monkeypatch.setenv("UNIFER_ROCM_INTERPRET", "1")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    avail = ROCmBackend().probe()
    assert not avail.ok and "TRITON_INTERPRET=1" in avail.reason


def test_interpreter_mode_refuses_unknown_arch(monkeypatch):
    monkeypatch.setenv("UNIFER_ROCM_INTERPRET", "gfx1100")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    avail = ROCmBackend().probe()
    assert not avail.ok and "gfx1100" in avail.reason


@pytest.mark.parametrize("value, arch", [("1", "gfx942"), ("gfx90a", "gfx90a"), ("GFX950", "gfx950")])
def test_interpreter_mode_claims_cpu_for_verification_only(monkeypatch, value, arch):
    monkeypatch.setenv("UNIFER_ROCM_INTERPRET", value)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for name in ("is_available", "device_count", "get_device_properties", "synchronize", "mem_get_info"):
        monkeypatch.setattr(torch.cuda, name, _boom)  # no GPU API is touched in this mode
    b = ROCmBackend()
    avail = b.probe()
    assert avail.ok and avail.reason.startswith("VERIFICATION ONLY") and arch in avail.reason
    assert b.arch == arch and b.device() == torch.device("cpu") and b.priority < 0
    assert "verification only" in b.device_name() and "verification only" in b.capabilities.extra["mode"]
    assert not b.capabilities.graph_capture and b.graph_runner() is None and b.communicator() is None
    b.synchronize()
    free, total = b.memory_info()
    assert 0 < free <= total


def test_interpreter_mode_never_wins_auto_selection(monkeypatch):
    from unifer.backends import BackendRegistry, select_backend
    from unifer_cpu import CPUBackend

    monkeypatch.setenv("UNIFER_ROCM_INTERPRET", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    registry = BackendRegistry()
    for b in (ROCmBackend(), CPUBackend()):
        registry.add(b)
    registry.probe_all()
    assert registry.entry("rocm").availability.ok
    assert select_backend(registry=registry).name == "cpu"
    assert select_backend("rocm", registry=registry).name == "rocm"


# --- kernels and services -----------------------------------------------------------------------------------------
def test_native_ops_bind_the_arch_launch_config(monkeypatch):
    pytest.importorskip("triton", reason="triton is not installed: the ROCm ops are Triton kernels")
    from unifer.kernels.triton import lookup, module
    from unifer.ops import reference

    b = ROCmBackend()
    b.arch = "gfx90a"
    ops = b.native_ops()
    assert set(ops) == {"rms_norm", "rotary_embedding", "silu_and_mul", "write_kv", "rotary_write_kv",
                        "paged_attention"}
    assert b.op_sources() == dict.fromkeys(ops, "triton")
    ref_params = inspect.signature(reference.paged_attention).parameters
    got_params = inspect.signature(ops["paged_attention"]).parameters
    assert [(p.name, p.kind, p.default) for p in got_params.values()] == \
           [(p.name, p.kind, p.default) for p in ref_params.values()]
    seen = {}
    monkeypatch.setattr(module("attention"), "unified_attention", lambda *a, **kw: seen.update(kw) or "out")
    assert ops["paged_attention"]("q", "kv", "md", scale=0.5, soft_cap=3.0) == "out"
    assert seen["config"] == lookup("hip", "gfx90a").attention and seen["config"] != lookup(None, None).attention
    assert seen["scale"] == 0.5 and seen["soft_cap"] == 3.0 and seen["sliding_window"] is None


def test_communicator_is_rccl_through_the_nccl_backend(monkeypatch, fake_process_group):
    import torch.distributed as dist

    calls = fake_process_group
    comm = ROCmBackend().communicator()
    assert comm.name == ROCmBackend().capabilities.communicator == "nccl"
    comm.init(rank=3, world_size=8, local_rank=1)
    assert calls == dict(backend="nccl", init_method="env://", rank=3, world_size=8, device=1)

    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    with pytest.raises(RuntimeError, match="RCCL"):
        comm.init(rank=0, world_size=2)


def test_kv_cache_budget_counts_memory_in_use(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (150 << 30, 192 << 30))
    assert ROCmBackend().kv_cache_budget(0.9) == int((192 << 30) * 0.9) - (42 << 30)


def test_plugin_registers_the_backend_and_entry_point():
    from importlib.metadata import entry_points

    from unifer_rocm import plugin

    added = []
    plugin.unifer_register_backends(registry=SimpleNamespace(add=added.append))
    assert [b.name for b in added] == ["rocm"]
    eps = {ep.name: ep.value for ep in entry_points(group="unifer.backends")}
    assert eps.get("rocm") == "unifer_rocm.plugin", "run: .venv/bin/pip install --no-deps -e plugins/rocm"
