"""The TPU attention path up to the Pallas kernel's boundary, checked against the kernel's own contract.

The Pallas kernel (torch_xla.experimental.custom_kernel.ragged_paged_attention) compiles only for a TPU. Its
module, torch_xla.experimental.pallas_kernels.ragged_paged_attention_v2 (JAX, torch-xla's `pallas` extra), also
holds what the kernel demands of its inputs (static_validate_inputs, dynamic_validate_inputs, the head tiling of
get_min_heads_per_blk) and the kernel's reference semantics (ref_ragged_paged_attention). Here the TPU backend's
own paged_attention op runs on bucket-padded metadata with the kernel replaced by those: every argument it passes
must satisfy the kernel's checks, and the result must match unifer's float64 reference attention. What this does
not run: the kernel itself (Mosaic, TPU only). Runs in .venv-tpu; skipped where torch_xla or JAX is absent.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torch_xla")
pytest.importorskip("jax")
os.environ.setdefault("PJRT_DEVICE", "CPU")

import ml_dtypes  # noqa: E402  (comes with JAX)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch_xla.experimental import custom_kernel  # noqa: E402
from torch_xla.experimental.pallas_kernels import ragged_paged_attention_v2 as rpa  # noqa: E402
from tpu_steps import ragged_step  # noqa: E402
from unifer.ops import reference  # noqa: E402
from unifer_tpu import TPUBackend, attention  # noqa: E402
from unifer_tpu.backend import TPU_CAPABILITIES  # noqa: E402
from unifer_tpu.buckets import Buckets  # noqa: E402

TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 3e-2}  # against float64, on unit-variance inputs


def _jax(t: torch.Tensor):
    if t.dtype == torch.bfloat16:
        return np.asarray(t.float().numpy().astype(ml_dtypes.bfloat16))
    return t.numpy()


@pytest.fixture
def kernel_calls(monkeypatch):
    """Replace the Pallas kernel by its input checks plus its reference semantics; record every call."""
    calls = []

    def fake(q, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs, *, sm_scale=1.0, sliding_window=None,
             soft_cap=None, **unexpected):
        assert not unexpected, unexpected
        args = [_jax(t) for t in (q, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs)]
        options = dict(sm_scale=sm_scale, sliding_window=sliding_window, soft_cap=soft_cap)
        rpa.static_validate_inputs(*args, **options)
        rpa.dynamic_validate_inputs(*args, **options)
        rpa.get_min_heads_per_blk(q.shape[1], kv_pages.shape[2], args[0].dtype, args[1].dtype)
        real = np.asarray(rpa.ref_ragged_paged_attention(*args, **options)).astype(np.float32)
        out = torch.zeros(q.shape, dtype=q.dtype)  # the kernel returns q's shape; padding rows are unspecified
        out[: real.shape[0]] = torch.from_numpy(real).to(q.dtype)
        calls.append({"shapes": [tuple(t.shape) for t in (q, kv_pages, kv_lens, page_indices, cu_q_lens)],
                      "num_seqs": int(num_seqs[0]), **options})
        return out

    monkeypatch.setattr(custom_kernel, "ragged_paged_attention", fake)
    return calls


def _tpu_backend(monkeypatch, max_model_len=512, block_size=16) -> TPUBackend:
    monkeypatch.setenv("PJRT_DEVICE", "TPU")
    backend = TPUBackend()
    assert backend.on_tpu and backend.native_ops()["paged_attention"] is attention.pallas_paged_attention
    backend.buckets = Buckets.for_limits(max_num_batched_tokens=256, max_num_seqs=32, max_model_len=max_model_len,
                                         block_size=block_size)
    return backend


# (context, new tokens) per sequence: decodes, a prefill, chunked prefill, block-boundary lengths, a long decode
STEPS = {
    "mixed": [(0, 5), (20, 1), (3, 9), (47, 1)],
    "decode_only": [(15, 1), (16, 1), (31, 1), (1, 1), (200, 1)],
    "prefill_only": [(0, 33), (0, 16), (0, 1)],
    "chunks_and_prefix_hits": [(32, 17), (64, 31), (5, 2)],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("window, cap", [(None, None), (24, None), (None, 30.0), (7, 5.0)])
@pytest.mark.parametrize("step", sorted(STEPS))
def test_pallas_path_meets_the_kernel_contract(monkeypatch, kernel_calls, step, window, cap, dtype):
    seqs = STEPS[step]
    head_dim, kv_heads, group, block_size = 128, 2, 4, 16
    backend = _tpu_backend(monkeypatch, block_size=block_size)
    query, ref_cache, tpu_cache, md = ragged_step(seqs, kv_heads=kv_heads, group=group, head_dim=head_dim,
                                            block_size=block_size, dtype=dtype)
    padded = backend.build_metadata(md)
    tokens, num_seqs, width = backend.buckets.pad(md.slot_mapping.shape[0], len(seqs), md.block_table.shape[1])
    assert tuple(padded.slot_mapping.shape) == (tokens,) and tuple(padded.block_table.shape) == (num_seqs, width)
    q_padded = torch.cat([query, torch.full((tokens - query.shape[0], *query.shape[1:]), 3.0, dtype=dtype)])
    got = backend.native_ops()["paged_attention"](q_padded, tpu_cache, padded, scale=head_dim**-0.5,
                                                  sliding_window=window, soft_cap=cap)
    want = reference.paged_attention(query.double(), ref_cache, md, scale=head_dim**-0.5, sliding_window=window,
                                     soft_cap=cap)
    assert got.shape == q_padded.shape and got.dtype == dtype
    err = (got[: query.shape[0]].double() - want).abs().max().item()
    assert err <= TOLERANCE[dtype], f"max error {err:.3g} > {TOLERANCE[dtype]}"
    (call,) = kernel_calls
    # The kernel sees the bucketed shapes (so one compiled kernel per bucket) and counts the real sequences.
    assert call["shapes"][0] == (tokens, kv_heads * group, head_dim)
    assert call["shapes"][2:] == [(num_seqs,), (num_seqs, width), (num_seqs + 1,)]
    assert call["num_seqs"] == len(seqs) and call["sliding_window"] == window and call["soft_cap"] == cap


def test_falsy_window_and_cap_mean_none(monkeypatch, kernel_calls):
    """The kernel rejects sliding_window=0 and soft_cap=0.0; a model config may spell 'none' that way."""
    backend = _tpu_backend(monkeypatch)
    query, _, tpu_cache, md = ragged_step([(3, 2)], kv_heads=1, group=2, head_dim=128, block_size=16,
                                    dtype=torch.float32)
    backend.native_ops()["paged_attention"](query, tpu_cache, backend.build_metadata(md), scale=0.1,
                                            sliding_window=0, soft_cap=0.0)
    assert kernel_calls[0]["sliding_window"] is None and kernel_calls[0]["soft_cap"] is None


@pytest.mark.parametrize("dtype", TPU_CAPABILITIES.dtypes)
def test_claimed_gqa_ratios_tile_for_the_kernel(dtype):
    """Every claimed GQA ratio, at power-of-two KV head counts, is a head layout the kernel accepts."""
    jdtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    for kv_heads in (1, 2, 4, 8, 16):
        for ratio in range(1, TPU_CAPABILITIES.max_gqa_ratio + 1):
            rpa.get_min_heads_per_blk(kv_heads * ratio, 2 * kv_heads, jdtype, jdtype)


def test_unaligned_kv_head_counts_are_refused_with_a_clear_error(monkeypatch, kernel_calls):
    """The kernel cannot tile e.g. 3 KV heads; the op says so before tracing the kernel."""
    backend = _tpu_backend(monkeypatch)
    query, _, tpu_cache, md = ragged_step([(3, 2)], kv_heads=3, group=1, head_dim=128, block_size=16,
                                    dtype=torch.float32)
    with pytest.raises(attention.Unsupported, match="3 KV heads"):
        backend.native_ops()["paged_attention"](query, tpu_cache, backend.build_metadata(md), scale=0.1)
    assert not kernel_calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_head_tiling_rule_is_the_kernels(dtype):
    jdtype = np.dtype(ml_dtypes.bfloat16) if dtype == torch.bfloat16 else np.dtype("float32")
    for kv_heads in range(1, 33):
        try:
            rpa.get_min_heads_per_blk(kv_heads, 2 * kv_heads, jdtype, jdtype)
            kernel_ok = True
        except ValueError:
            kernel_ok = False
        assert attention.kernel_heads_tile(kv_heads, dtype) == kernel_ok, kv_heads
