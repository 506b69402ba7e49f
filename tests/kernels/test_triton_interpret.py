"""The portable Triton kernels, run by Triton's CPU interpreter on small shapes, against ``unifer.ops.reference``.

The cases run in one child process with TRITON_INTERPRET set (tests/interpreter_harness.py says why).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from unittest import mock

import pytest

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))  # tests/: the harness, also when run as the child script
import interpreter_harness as harness  # noqa: E402


# ----------------------------------------------------------------------------------------------------------------
# Cases (run in the child process)
# ----------------------------------------------------------------------------------------------------------------
def _max_err(a, b) -> float:
    import torch

    if torch.isnan(a).any():
        return float("inf")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _tol(dtype) -> float:
    import torch

    return {torch.float64: 1e-9, torch.float32: 2e-4, torch.bfloat16: 3e-2, torch.float16: 3e-3}[dtype]


@contextlib.contextmanager
def _nan_scratch():
    """The split-KV partials start NaN, so a merge that reads a partial no program wrote shows."""
    import torch

    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    with mock.patch.object(torch, "empty", lambda *a, **k: poison(empty(*a, **k))), \
            mock.patch.object(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k))):
        yield


def _attention_case(
    *,
    seed: int,
    query_lens: list[int],
    context_lens: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int = 16,
    dtype: str = "float32",
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    num_segments: int | None = 1,
    config: dict | None = None,
    bound: bool = False,
    head_major: bool = False,
) -> float:
    """Returns max error against the float64 reference. context_lens are cached tokens before the new ones;
    ``bound``: the metadata only bounds the contexts, as in a graph capture; ``head_major``: the kernel reads the
    same cache stored [2, blocks, KH, block_size, D] (as paged_attention_head_major passes it)."""
    from dataclasses import replace

    import torch
    from unifer.backends.backend import AttentionMetadata
    from unifer.kernels.triton import module
    from unifer.kernels.triton.util import current_configs
    from unifer.ops import reference as ref

    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [c + q for c, q in zip(context_lens, query_lens, strict=True)]
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3  # block 0 reserved (never used) + spares
    perm = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()  # shuffled; block 0 unused
    max_blocks = max(blocks_per_seq)
    table = torch.zeros(len(seq_lens), max_blocks + 1, dtype=torch.int32)
    for i, n in enumerate(blocks_per_seq):
        table[i, :n] = torch.tensor([perm.pop() for _ in range(n)], dtype=torch.int32)
    # Every slot starts NaN; only positions < seq_len are filled, so reading past a sequence's end shows.
    cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=torch.float64)
    for i, s in enumerate(seq_lens):
        for p in range(s):
            b, o = int(table[i, p // block_size]), p % block_size
            cache[:, b, o] = torch.randn(2, num_kv_heads, head_dim, generator=gen, dtype=torch.float64)
    total = sum(query_lens)
    q = torch.randn(total, num_heads, head_dim, generator=gen, dtype=torch.float64)
    qsl = [0]
    for n in query_lens:
        qsl.append(qsl[-1] + n)
    md = AttentionMetadata(
        query_start_loc=torch.tensor(qsl, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_table=table,
        slot_mapping=torch.full((total,), -1, dtype=torch.int64),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        max_seq_len_is_bound=bound,
    )
    scale = head_dim**-0.5
    expected = ref.paged_attention(q, cache, md, scale=scale, sliding_window=sliding_window, soft_cap=soft_cap)
    out = torch.full(q.shape, float("nan"), dtype=dt)
    with _nan_scratch():
        got = module("attention").unified_attention(
            q.to(dt),
            cache.to(dt).transpose(2, 3).contiguous().transpose(2, 3) if head_major else cache.to(dt),
            md,
            scale=scale,
            sliding_window=sliding_window,
            soft_cap=soft_cap,
            num_segments=num_segments,
            config=replace(current_configs(torch.device("cpu")).attention, **config) if config else None,
            out=out,
        )
    assert got.data_ptr() == out.data_ptr()
    err = _max_err(got, expected)
    assert err <= _tol(dt), f"max error {err} > {_tol(dt)}"
    return err


ATTENTION_CASES: dict[str, dict] = {
    "decode": dict(query_lens=[1, 1, 1], context_lens=[5, 16, 33], num_heads=4, num_kv_heads=4, head_dim=64),
    "prefill": dict(query_lens=[7, 20], context_lens=[0, 0], num_heads=4, num_kv_heads=2, head_dim=64),
    "mixed": dict(query_lens=[1, 9, 1, 3], context_lens=[20, 0, 7, 0], num_heads=4, num_kv_heads=2, head_dim=64),
    "chunk_over_context": dict(query_lens=[6, 17], context_lens=[25, 16], num_heads=4, num_kv_heads=1, head_dim=64),
    "gqa1_hd80": dict(query_lens=[3, 1], context_lens=[14, 30], num_heads=2, num_kv_heads=2, head_dim=80),
    "gqa2_hd80": dict(query_lens=[5, 1], context_lens=[11, 17], num_heads=4, num_kv_heads=2, head_dim=80),
    "gqa4": dict(query_lens=[4, 1, 2], context_lens=[13, 40, 0], num_heads=8, num_kv_heads=2, head_dim=64),
    "gqa3_hd96": dict(query_lens=[5, 1], context_lens=[12, 20], num_heads=6, num_kv_heads=2, head_dim=96),
    # Several KV tiles that every row of a query block sees whole, then the block's diagonal tiles.
    "long_chunk": dict(query_lens=[40, 3], context_lens=[70, 100], num_heads=4, num_kv_heads=2, head_dim=64),
    "block32": dict(query_lens=[5, 1], context_lens=[40, 31], num_heads=4, num_kv_heads=2, head_dim=64, block_size=32),
    "sliding_window": dict(
        query_lens=[9, 1, 1], context_lens=[30, 40, 3], num_heads=4, num_kv_heads=2, head_dim=64, sliding_window=8
    ),
    "soft_cap": dict(query_lens=[4, 1], context_lens=[10, 20], num_heads=4, num_kv_heads=2, head_dim=64, soft_cap=5.0),
    "split_kv_decode": dict(
        query_lens=[1, 1], context_lens=[70, 9], num_heads=4, num_kv_heads=1, head_dim=64, num_segments=4
    ),
    # As a decode graph captured for the longest context runs short ones: most segments have no tiles.
    "split_kv_mostly_empty": dict(
        query_lens=[1, 1, 1], context_lens=[4, 40, 200], num_heads=4, num_kv_heads=2, head_dim=64, num_segments=16
    ),
    # Query blocks of one prefill chunk over a context, each with its own tile range, so with its own empty segments.
    "split_kv_chunk_many_segments": dict(
        query_lens=[1, 40, 1], context_lens=[3, 60, 150], num_heads=4, num_kv_heads=2, head_dim=64, num_segments=8
    ),
    "split_kv_mixed_window_cap": dict(
        query_lens=[3, 1],
        context_lens=[50, 33],
        num_heads=4,
        num_kv_heads=2,
        head_dim=80,
        num_segments=4,
        sliding_window=20,
        soft_cap=10.0,
    ),
    "empty_sequence": dict(query_lens=[0, 2, 1], context_lens=[4, 3, 5], num_heads=2, num_kv_heads=1, head_dim=64),
    "float64": dict(
        query_lens=[3, 1], context_lens=[10, 21], num_heads=4, num_kv_heads=2, head_dim=64, dtype="float64"
    ),
    "bfloat16": dict(
        query_lens=[2, 1], context_lens=[10, 21], num_heads=4, num_kv_heads=2, head_dim=64, dtype="bfloat16"
    ),
}


def _rms_norm_case(seed: int, dtype: str, residual: bool) -> float:
    import torch
    from unifer.kernels.triton import ops
    from unifer.ops import reference as ref

    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 3, 80, generator=gen).to(dt)
    w = torch.randn(80, generator=gen).to(dt)
    r = torch.randn(5, 3, 80, generator=gen).to(dt) if residual else None
    got = ops()["rms_norm"](x, w, 1e-5, r)
    want = ref.rms_norm(x.double(), w.double(), 1e-5, None if r is None else r.double())
    if residual:
        assert isinstance(got, tuple) and got[0].dtype == dt and got[1].dtype == dt
        return max(_check(got[0], want[0], dt), _check(got[1], want[1], dt))
    return _check(got, want, dt)


def _check(got, want, dt) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    err = _max_err(got, want) / max(1.0, float(want.abs().max()))
    assert err <= _tol(dt), f"max error {err} > {_tol(dt)}"
    return err


def _rotary_case(seed: int, dtype: str) -> float:
    import torch
    from unifer.kernels.triton import ops
    from unifer.ops import reference as ref

    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(7, 6 + 2 + 2, 80, generator=gen).to(dt)
    q, k = qkv[:, :6], qkv[:, 6:8]  # strided views, as a fused QKV projection yields
    inv = 1.0 / (10000 ** (torch.arange(0, 80, 2, dtype=torch.float64) / 80))
    freqs = torch.arange(64, dtype=torch.float64)[:, None] * inv[None, :]
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(torch.float32)
    pos = torch.randint(0, 64, (7,), generator=gen)
    got_q, got_k = ops()["rotary_embedding"](pos, q, k, cache)
    want_q, want_k = ref.rotary_embedding(pos, q.double(), k.double(), cache.double())
    return max(_check(got_q, want_q, dt), _check(got_k, want_k, dt))


def _silu_case(seed: int, dtype: str) -> float:
    import torch
    from unifer.kernels.triton import ops
    from unifer.ops import reference as ref

    dt = getattr(torch, dtype)
    x = torch.randn(4, 3, 2 * 72, generator=torch.Generator().manual_seed(seed)).to(dt)
    return _check(ops()["silu_and_mul"](x), ref.silu_and_mul(x.double()), dt)


def _write_kv_case(seed: int, dtype: str, head_major: bool = False) -> float:
    """``head_major``: the kernel writes a [2, blocks, KH, block_size, D] cache, compared through its transpose."""
    import torch
    from unifer.kernels.triton import ops
    from unifer.ops import reference as ref

    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(6, 2, 80, generator=gen).to(dt)
    v = torch.randn(6, 2, 80, generator=gen).to(dt)
    slots = torch.tensor([5, -1, 16, 17, -1, 47], dtype=torch.int64)
    want = torch.full((2, 3, 16, 2, 80), float("nan"), dtype=dt)
    stored = torch.full((2, 3, 2, 16, 80) if head_major else want.shape, float("nan"), dtype=dt)
    ref.write_kv(k, v, want, slots)
    ops(head_major=head_major)["write_kv"](k, v, stored, slots)
    got = stored.transpose(2, 3) if head_major else stored
    assert torch.equal(got.isnan(), want.isnan()), "write_kv wrote (or skipped) different slots"
    return _check(got.nan_to_num(0.0), want.nan_to_num(0.0), dt)


def _rotary_write_kv_case(seed: int, dtype: str, head_major: bool = False) -> float:
    """The fused kernel against the reference's rotary_embedding then write_kv, on strided q/k/v views of a fused
    QKV output, head size 80 (padded lanes), with padding slots; ``head_major`` as for write_kv."""
    import torch
    from unifer.kernels.triton import ops
    from unifer.ops import reference as ref

    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(6, 6 + 2 + 2, 80, generator=gen).to(dt)
    q, k, v = qkv[:, :6], qkv[:, 6:8], qkv[:, 8:]
    inv = 1.0 / (10000 ** (torch.arange(0, 80, 2, dtype=torch.float64) / 80))
    freqs = torch.arange(64, dtype=torch.float64)[:, None] * inv[None, :]
    cos_sin = torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(torch.float32)
    pos = torch.randint(0, 64, (6,), generator=gen)
    slots = torch.tensor([5, -1, 16, 17, -1, 47], dtype=torch.int64)
    want = torch.full((2, 3, 16, 2, 80), float("nan"), dtype=torch.float64)
    stored = torch.full((2, 3, 2, 16, 80) if head_major else (2, 3, 16, 2, 80), float("nan"), dtype=dt)
    want_q = ref.rotary_write_kv(pos, q.double(), k.double(), v.double(), cos_sin.double(), want, slots)
    got_q = ops(head_major=head_major)["rotary_write_kv"](pos, q, k, v, cos_sin, stored, slots)
    got = stored.transpose(2, 3) if head_major else stored
    assert torch.equal(got.isnan(), want.isnan()), "rotary_write_kv wrote (or skipped) different slots"
    assert torch.equal(q, qkv[:, :6]) and not got_q.data_ptr() == q.data_ptr(), "the query must not change in place"
    return max(_check(got_q, want_q, dt), _check(got.nan_to_num(0.0), want.nan_to_num(0.0), dt))


def _head_major_table_case(seed: int) -> float:
    """The head-major table's attention, on a cache its write_kv filled, against the token-major table on the
    same K/V: the same kernel reads the same values, so the outputs are identical."""
    import torch
    from unifer.backends.backend import AttentionMetadata
    from unifer.kernels.triton import ops

    gen = torch.Generator().manual_seed(seed)
    seq_lens, blocks = [21, 9], [[3, 1], [4]]
    k, v = (torch.randn(sum(seq_lens), 2, 64, generator=gen) for _ in range(2))
    slots = torch.tensor([row[p // 16] * 16 + p % 16 for row, n in zip(blocks, seq_lens, strict=True)
                          for p in range(n)])
    q = torch.randn(2, 4, 64, generator=gen)
    md = AttentionMetadata(query_start_loc=torch.tensor([0, 1, 2], dtype=torch.int32),
                           seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
                           block_table=torch.tensor([[3, 1], [4, 0]], dtype=torch.int32), slot_mapping=slots[[20, 29]],
                           max_query_len=1, max_seq_len=max(seq_lens))
    outs = []
    for head_major, shape in ((False, (2, 5, 16, 2, 64)), (True, (2, 5, 2, 16, 64))):
        table = ops(head_major=head_major)
        cache = torch.full(shape, float("nan"))
        table["write_kv"](k, v, cache, slots)
        outs.append(table["paged_attention"](q, cache, md, scale=0.125))
    assert not outs[0].isnan().any() and torch.equal(outs[0], outs[1]), "the two layouts' attention differs"
    return 0.0


def _ops_signatures() -> float:
    import inspect

    from unifer.kernels.triton import ops
    from unifer.ops import reference as ref

    for head_major in (False, True):
        for name, fn in ops(head_major=head_major).items():
            assert inspect.signature(fn) == inspect.signature(getattr(ref, name)), (name, head_major)
    return 0.0


def _all_cases() -> dict:
    cases = {"ops_signatures": _ops_signatures}
    for i, (name, kw) in enumerate(ATTENTION_CASES.items()):
        cases[f"attention[{name}]"] = lambda kw=kw, i=i: _attention_case(seed=100 + i, **kw)
        # The loop over tiles seen whole, without masks, that a config row may turn on (the Hopper one does).
        cases[f"attention[{name},unmasked_full_tiles]"] = lambda kw=kw, i=i: _attention_case(
            seed=100 + i, config={"unmasked_full_tiles": 1}, **kw)
        # The exit of segments without tiles, and its merge: graph launches (metadata that only bounds the contexts)
        # take it where the config row turns it on (the Hopper one does).
        if (kw.get("num_segments") or 1) > 1:
            cases[f"attention[{name},skip_empty_segments]"] = lambda kw=kw, i=i: _attention_case(
                seed=100 + i, config={"skip_empty_segments": 1}, bound=True, **kw)
    # A head-major cache ([2, blocks, KH, block_size, D]), which the cuda backend takes with UNIFER_CUDA_KV_LAYOUT=HND.
    for name in ("mixed", "gqa4", "block32", "split_kv_mostly_empty"):
        cases[f"attention[{name},head_major]"] = lambda name=name: _attention_case(
            seed=300, head_major=True, **ATTENTION_CASES[name])
    cases["head_major_table"] = lambda: _head_major_table_case(9)
    cases["write_kv[float32,head_major]"] = lambda: _write_kv_case(5, "float32", head_major=True)
    cases["rotary_write_kv[float32,head_major]"] = lambda: _rotary_write_kv_case(8, "float32", head_major=True)
    cases["attention[split_kv_heuristic]"] = lambda: _attention_case(
        seed=7, query_lens=[1], context_lens=[40], num_heads=2, num_kv_heads=1, head_dim=64, num_segments=None
    )
    for dtype in ("float32", "float64"):
        cases[f"rms_norm[{dtype}]"] = lambda d=dtype: _rms_norm_case(1, d, False)
        cases[f"rms_norm_residual[{dtype}]"] = lambda d=dtype: _rms_norm_case(2, d, True)
        cases[f"rotary_embedding[{dtype}]"] = lambda d=dtype: _rotary_case(3, d)
        cases[f"silu_and_mul[{dtype}]"] = lambda d=dtype: _silu_case(4, d)
        cases[f"write_kv[{dtype}]"] = lambda d=dtype: _write_kv_case(5, d)
        cases[f"rotary_write_kv[{dtype}]"] = lambda d=dtype: _rotary_write_kv_case(8, d)
    cases["rms_norm_residual[bfloat16]"] = lambda: _rms_norm_case(6, "bfloat16", True)
    return cases


CASE_NAMES = list(_all_cases())


def _numpy_compat() -> None:
    """Triton 3.6's interpreter turns a scalar (a 1-element array) into a loop bound with int(array), which
    NumPy >= 2.4 refuses for arrays of ndim > 0; wrap its tensor patching to take the element instead."""
    import triton.runtime.interpreter as interp

    original = interp._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    if getattr(original, "__name__", "") != "patched":
        interp._patch_lang_tensor = patched

    # Its tl.dot multiplies bfloat16 operands as their raw uint16 bits; widen them to float32 first (exact).
    import numpy as np
    import triton.language as tl

    builder = interp.InterpreterBuilder
    original_dot = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        def widen(x):
            if x.dtype == tl.bfloat16:
                bits = x.data.astype(np.uint32) << np.uint32(16)
                return interp.TensorHandle(bits.view(np.float32), tl.float32)
            return x

        return original_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    if not getattr(builder, "_unifer_dot", False):
        builder.create_dot = create_dot
        builder._unifer_dot = True


def _child_main() -> None:
    _numpy_compat()
    harness.run_cases(_all_cases())


# ----------------------------------------------------------------------------------------------------------------
# pytest side
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    return harness.interpreter_results(HERE)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_kernel_matches_reference_in_interpreter(interpreter_results, case):
    harness.check(interpreter_results, case)


if __name__ == "__main__":
    _child_main()
