"""The CUDA backend's KV-cache layout switch: the cache's shape and the kernels' reading of it follow one setting.
The kernels themselves are checked against the reference in both layouts in tests/kernels/test_triton_interpret.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

try:
    import unifer_cuda  # noqa: F401
except ImportError:  # not installed in this environment: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "cuda" / "src"))

from unifer_cuda import CUDABackend  # noqa: E402
from unifer_cuda.backend import KV_LAYOUT_ENV  # noqa: E402

CACHE_OPS = ("write_kv", "rotary_write_kv", "paged_attention")


def test_token_major_by_default(monkeypatch):
    monkeypatch.delenv(KV_LAYOUT_ENV, raising=False)
    backend = CUDABackend()
    assert backend.kv_cache_shape(10, 16, 8, 64) == (2, 10, 16, 8, 64)
    pytest.importorskip("triton")
    assert all(backend.native_ops()[op].__name__ == op for op in CACHE_OPS)


def test_head_major_shape_and_ops_agree(monkeypatch):
    monkeypatch.setenv(KV_LAYOUT_ENV, "hnd")
    backend = CUDABackend()
    assert backend.kv_cache_shape(10, 16, 8, 64) == (2, 10, 8, 16, 64)
    pytest.importorskip("triton")
    ops = backend.native_ops()
    assert all(ops[op].__name__ == f"{op}_head_major" for op in CACHE_OPS)
    assert all(ops[op].__name__ == op for op in set(ops) - set(CACHE_OPS))


def test_the_setting_is_read_once(monkeypatch):
    monkeypatch.setenv(KV_LAYOUT_ENV, "HND")
    backend = CUDABackend()
    assert backend.kv_cache_shape(1, 16, 2, 64) == (2, 1, 2, 16, 64)
    monkeypatch.setenv(KV_LAYOUT_ENV, "NHD")
    assert backend.kv_cache_shape(1, 16, 2, 64) == (2, 1, 2, 16, 64)


def test_an_unknown_layout_is_named(monkeypatch):
    monkeypatch.setenv(KV_LAYOUT_ENV, "HDN")
    with pytest.raises(ValueError, match=f"{KV_LAYOUT_ENV}='HDN': expected NHD or HND"):
        CUDABackend().kv_cache_shape(1, 16, 2, 64)
