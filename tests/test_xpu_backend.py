"""The XPU backend without Intel hardware: probe on faked torch.xpu, the verification switch, kernel selection per
op (IPEX -> Triton -> reference) as `unifer backends` shows it, claims per path, and the communicator choice."""

from __future__ import annotations

import importlib.metadata
import sys
import types
from pathlib import Path

import pytest
import torch

try:
    import unifer_xpu  # noqa: F401
except ImportError:  # not installed in this environment: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "xpu" / "src"))

from unifer.ops import reference  # noqa: E402
from unifer.ops.table import resolve_ops  # noqa: E402
from unifer_xpu import backend as xb  # noqa: E402
from unifer_xpu import comm, ipex_ops  # noqa: E402
from unifer_xpu.backend import VERIFY_ENV, XPUBackend  # noqa: E402

TORCH_MM = ".".join(torch.__version__.split(".")[:2])


@pytest.fixture(autouse=True)
def _no_switch(monkeypatch):
    monkeypatch.delenv(VERIFY_ENV, raising=False)


@pytest.fixture
def no_cuda(monkeypatch):
    """The XPU probe must never ask CUDA anything."""

    def boom(*a, **k):
        raise AssertionError("the XPU backend touched torch.cuda")

    for fn in ("is_available", "device_count", "get_device_name", "init", "current_device"):
        monkeypatch.setattr(torch.cuda, fn, boom)


def fake_xpu(monkeypatch, *, compiled=True, available=True, count=2, name="Intel(R) Data Center GPU Max 1550"):
    xpu = types.SimpleNamespace(_is_compiled=lambda: compiled, is_available=lambda: available,
                                device_count=lambda: count, get_device_name=lambda index=0: name)
    monkeypatch.setattr(torch, "xpu", xpu)


def fake_ipex(monkeypatch, version: str | None):
    real = importlib.metadata.version

    def version_of(dist):
        if dist == "intel-extension-for-pytorch":
            if version is None:
                raise importlib.metadata.PackageNotFoundError(dist)
            return version
        return real(dist)

    monkeypatch.setattr(xb.importlib.metadata, "version", version_of)


def fake_kernels(monkeypatch, *, ipex: bool, triton: bool):
    monkeypatch.setattr(xb, "ipex_status", lambda device: (ipex, "faked"))
    monkeypatch.setattr(xb, "triton_xpu_status", lambda: (triton, "faked"))


# --- probe ---------------------------------------------------------------------------------------------------
def test_identity():
    b = XPUBackend()
    assert (b.name, b.device_type, b.api_version) == ("xpu", "xpu", "1.0")
    assert b.device() == torch.device("xpu", 0)


def test_probe_claims_a_visible_xpu_with_its_name(monkeypatch, no_cuda):
    fake_xpu(monkeypatch)
    avail = XPUBackend().probe()
    assert avail.ok
    assert "2 x Intel(R) Data Center GPU Max 1550" in avail.reason


@pytest.mark.parametrize("compiled, available, why", [(False, False, "not built with XPU"),
                                                      (True, False, "no Intel GPU visible")])
def test_probe_refuses_without_an_xpu(monkeypatch, no_cuda, compiled, available, why):
    fake_xpu(monkeypatch, compiled=compiled, available=available)
    avail = XPUBackend().probe()
    assert not avail.ok and why in avail.reason


def test_probe_refuses_this_cpu_only_machine(no_cuda):
    if torch.xpu.is_available():
        pytest.skip("an Intel GPU is present")
    avail = XPUBackend().probe()
    assert not avail.ok and "XPU" in avail.reason


def test_probe_never_raises(monkeypatch, no_cuda):
    def broken():
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(torch, "xpu", types.SimpleNamespace(_is_compiled=lambda: True, is_available=broken))
    avail = XPUBackend().probe()
    assert not avail.ok and "driver exploded" in avail.reason


# --- the verification switch ---------------------------------------------------------------------------------
def test_switch_without_ipex_claims_nothing(monkeypatch, no_cuda):
    monkeypatch.setenv(VERIFY_ENV, "1")
    fake_ipex(monkeypatch, None)
    avail = XPUBackend().probe()
    assert not avail.ok and VERIFY_ENV in avail.reason and "not installed" in avail.reason


def test_switch_claims_the_cpu_and_says_so(monkeypatch, no_cuda):
    monkeypatch.setenv(VERIFY_ENV, "1")
    fake_ipex(monkeypatch, f"{TORCH_MM}.0")
    b = XPUBackend()
    avail = b.probe()
    assert avail.ok and avail.reason.startswith(f"VERIFICATION MODE ({VERIFY_ENV}=1)")
    assert b.device() == torch.device("cpu") and b.device_type == "cpu"
    assert "no Intel GPU" in b.device_name()


def test_switch_off_values(monkeypatch):
    monkeypatch.setenv(VERIFY_ENV, "0")
    assert not XPUBackend().verify_on_cpu
    assert XPUBackend(verify_on_cpu=True).verify_on_cpu


# --- which kernels -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version, device, ok, why", [
    (None, "xpu", False, "not installed"),
    ("2.7.10+xpu", "xpu", False, "needs torch 2.7.*"),
    (f"{TORCH_MM}.0", "xpu", False, "CPU build"),
    (f"{TORCH_MM}.10+xpu", "xpu", True, ""),
    (f"{TORCH_MM}.0", "cpu", True, ""),
])
def test_ipex_status(monkeypatch, version, device, ok, why):
    fake_ipex(monkeypatch, version)
    got, reason = xb.ipex_status(device)
    assert got is ok and why in reason


def test_triton_needs_intels_backend(monkeypatch, tmp_path):
    pkg = tmp_path / "triton"
    (pkg / "backends" / "nvidia").mkdir(parents=True)
    spec = types.SimpleNamespace(submodule_search_locations=[str(pkg)])
    monkeypatch.setattr(xb.importlib.util, "find_spec", lambda name: spec if name == "triton" else None)
    ok, reason = xb.triton_xpu_status()
    assert not ok and "Intel XPU backend" in reason
    (pkg / "backends" / "intel").mkdir()
    assert xb.triton_xpu_status()[0]
    monkeypatch.setattr(xb.importlib.util, "find_spec", lambda name: None)
    assert xb.triton_xpu_status() == (False, "triton is not installed")


IPEX4 = {"rms_norm", "rotary_embedding", "write_kv", "paged_attention"}
TRITON6 = IPEX4 | {"silu_and_mul", "rotary_write_kv"}


@pytest.mark.parametrize("ipex, triton, want", [
    # Triton's fused rotary_write_kv would write IPEX's cache layout: left to the table's composite of IPEX's parts
    (True, True, {**dict.fromkeys(IPEX4, "ipex"), "silu_and_mul": "triton"}),
    (True, False, dict.fromkeys(IPEX4, "ipex")),
    (False, True, dict.fromkeys(TRITON6, "triton")),
    (False, False, {}),
])
def test_select_op_sources(ipex, triton, want):
    got = xb.select_op_sources(ipex=ipex, triton=triton)
    assert got == want
    # they share the KV-cache layout
    assert got.get("write_kv") == got.get("paged_attention")
    assert got.get("rotary_write_kv", got.get("write_kv")) == got.get("write_kv")


def test_ops_table_shows_each_library(monkeypatch):
    fake_kernels(monkeypatch, ipex=True, triton=True)
    b = XPUBackend()
    ops = b.ops
    assert {op: ops.source(op) for op in ("rms_norm", "paged_attention", "silu_and_mul", "random_sample")} == {
        "rms_norm": "ipex", "paged_attention": "ipex", "silu_and_mul": "triton", "random_sample": "fallback"}
    assert ops.paged_attention is ipex_ops.paged_attention
    assert ops.silu_and_mul is not reference.silu_and_mul and ops.random_sample is reference.random_sample


def test_reference_only_path(monkeypatch):
    fake_kernels(monkeypatch, ipex=False, triton=False)
    b = XPUBackend()
    assert b.native_ops() == {} and b.ops.source("paged_attention") == "fallback"
    assert b.kv_cache_shape(10, 16, 2, 64) == (2, 10, 16, 2, 64)
    assert b.capabilities.extra["attention"] == "reference"


def test_claims_and_layout_follow_the_attention_library(monkeypatch):
    fake_kernels(monkeypatch, ipex=True, triton=False)
    on_cpu, on_xpu = XPUBackend(verify_on_cpu=True), XPUBackend()
    # IPEX's CPU kernels pass the whole suite in all three dtypes (scripts/ci_xpu.sh), heads-major cache; on XPU
    # the "flash" layout.
    assert set(on_cpu.capabilities.dtypes) == {"float32", "bfloat16", "float16"}
    assert on_cpu.kv_cache_shape(10, 16, 2, 64) == (2, 10, 2, 16, 64)
    assert set(on_xpu.capabilities.dtypes) == {"float32", "bfloat16", "float16"}
    assert on_xpu.kv_cache_shape(10, 16, 2, 64) == (2, 10, 16, 2, 64)
    fake_kernels(monkeypatch, ipex=False, triton=True)
    assert XPUBackend().capabilities.block_sizes == (16, 32)


def test_kernel_summary_in_probe(monkeypatch, no_cuda):
    fake_xpu(monkeypatch)
    fake_kernels(monkeypatch, ipex=False, triton=True)
    assert "kernels: triton for 6" in XPUBackend().probe().reason


def test_op_source_labels_must_name_native_ops():
    with pytest.raises(ValueError, match="paged_attention"):
        resolve_ops({"rms_norm": reference.rms_norm}, {"paged_attention": "ipex"})
    assert resolve_ops({"rms_norm": reference.rms_norm}).source("rms_norm") == "native"


# --- communicator --------------------------------------------------------------------------------------------
def test_communicator_prefers_xccl(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_xccl_available", lambda: True, raising=False)
    assert comm.choose()[0] == "xccl"


def test_communicator_falls_back_to_oneccl(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_xccl_available", lambda: False, raising=False)
    monkeypatch.setattr(comm.importlib.util, "find_spec",
                        lambda name: object() if name == "oneccl_bindings_for_pytorch" else None)
    assert comm.choose()[0] == "ccl"
    fake_kernels(monkeypatch, ipex=False, triton=False)
    b = XPUBackend()
    assert b.capabilities.communicator == "ccl" and b.communicator().backend == "ccl"


def test_no_communicator(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_xccl_available", lambda: False, raising=False)
    monkeypatch.setattr(comm.importlib.util, "find_spec", lambda name: None)
    name, why = comm.choose()
    assert name is None and "oneccl_bindings_for_pytorch" in why
    assert XPUBackend().communicator() is None
    with pytest.raises(ValueError):
        comm.XPUCommunicator("nccl")


# --- pinning one kernel library (certifying each path) ----------------------------------------------------------
@pytest.mark.parametrize("kernels, want", [("auto", {"ipex", "triton"}), ("ipex", {"ipex"}),
                                           ("triton", {"triton"}), ("reference", set())])
def test_kernels_switch_pins_one_library(monkeypatch, no_cuda, kernels, want):
    fake_xpu(monkeypatch)
    fake_kernels(monkeypatch, ipex=True, triton=True)
    monkeypatch.setenv(xb.KERNELS_ENV, kernels)
    b = XPUBackend()
    assert b.probe().ok and set(b.op_sources().values()) == want


def test_kernels_switch_refuses_what_is_missing(monkeypatch, no_cuda):
    fake_xpu(monkeypatch)
    fake_kernels(monkeypatch, ipex=False, triton=True)
    avail = XPUBackend(kernels="ipex").probe()
    assert not avail.ok and "UNIFER_XPU_KERNELS=ipex" in avail.reason
    assert "not one of" in XPUBackend(kernels="cuda").probe().reason
    assert "nothing to verify" in XPUBackend(verify_on_cpu=True, kernels="triton").probe().reason
