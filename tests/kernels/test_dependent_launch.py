"""When the Triton kernels launch with programmatic dependent launch: the config row of the target turns it on
(CUDA sm_90 and later only); a Triton without the launch option, or a driver too old to keep such launches inside
CUDA graphs, turns it off. That the
sm_90/sm_100 builds carry the wait and the sm_80 builds do not is checked in test_triton_aot.py."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from unifer.kernels.triton import KernelConfigs, lookup, module  # noqa: E402

ON, OFF = {"PDL": True, "launch_pdl": True}, {"PDL": False}


def test_only_hopper_and_later_rows_turn_it_on():
    assert lookup("cuda", 90).dependent_launch and lookup("cuda", 100).dependent_launch
    for vendor, arch in (("cuda", 80), ("cuda", None), ("hip", "gfx942"), ("xpu", None), (None, None)):
        assert not lookup(vendor, arch).dependent_launch, (vendor, arch)


@pytest.mark.parametrize(("row_on", "triton_can", "driver", "want"), [
    (True, True, 13000, ON), (True, True, 12030, ON), (True, True, 12020, OFF), (True, True, 0, OFF),
    (True, False, 13000, OFF), (False, True, 13000, OFF)])
def test_launch_options_follow_the_row_triton_and_the_driver(monkeypatch, row_on, triton_can, driver, want):
    dl = module("dependent_launch")
    monkeypatch.setattr(dl, "current_configs", lambda device: KernelConfigs(dependent_launch=row_on))
    monkeypatch.setattr(dl, "triton_can_launch", lambda: triton_can)
    monkeypatch.setattr(dl, "driver_version", lambda: driver)
    assert dl.launch_options(torch.device("cpu")) == want


def test_this_triton_takes_the_launch_option():
    assert module("dependent_launch").triton_can_launch()  # the pinned Triton (3.6) has it


def test_no_driver_reads_as_version_zero(monkeypatch):
    dl = module("dependent_launch")

    def no_library(name):
        raise OSError(f"{name}: cannot open shared object file")

    dl.driver_version.cache_clear()
    monkeypatch.setattr(dl.ctypes, "CDLL", no_library)
    try:
        assert dl.driver_version() == 0
    finally:
        dl.driver_version.cache_clear()
