"""The ROCm backend in verification mode: its ops table, with each CDNA arch's launch configs, run by Triton's
CPU interpreter against ``unifer.ops.reference``; plus the interpreter fixes that mode applies.

It reuses the cases of tests/kernels/test_triton_interpret.py and, like it, runs them in one interpreter child
process (tests/interpreter_harness.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
# tests/ and tests/kernels: the harness and the portable kernels' cases, also when run as the child script
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parents[1] / "kernels")]
import interpreter_harness as harness  # noqa: E402
import test_triton_interpret as shared  # noqa: E402

ARCHS = ("gfx90a", "gfx942", "gfx950")


# ----------------------------------------------------------------------------------------------------------------
# Cases (run in the child process)
# ----------------------------------------------------------------------------------------------------------------
def _backend(arch: str):
    os.environ["UNIFER_ROCM_INTERPRET"] = arch
    from unifer_rocm import ROCmBackend

    b = ROCmBackend()
    avail = b.probe()
    assert avail.ok and "VERIFICATION ONLY" in avail.reason, avail.reason
    assert b.arch == arch and b.device().type == "cpu"
    return b


def _bf16_cast_rounds_to_nearest_even() -> float:
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def to_bf16(x_ptr, y_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs).to(tl.bfloat16))

    # 1 + 2^-8 + 2^-9 sits above the midpoint: truncation gives 1, rounding 1 + 2^-7. 1 + 2^-8 is a tie that
    # rounds to even (1). Then a carry into the exponent, a negative value, a tiny and a huge one.
    x = torch.tensor([1 + 2**-8 + 2**-9, 1 + 2**-8, 2 - 2**-9, -3.0078125, 1e-30, 3e38, 0.1, -7.7] * 2)
    y = torch.empty(16, dtype=torch.bfloat16)
    to_bf16[(1,)](x, y, N=16)
    want = x.to(torch.bfloat16)
    assert torch.equal(y.view(torch.int16), want.view(torch.int16)), (y.tolist(), want.tolist())
    return 0.0


def _bf16_dot_is_a_product_of_values() -> float:
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def dot(a_ptr, b_ptr, c_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        a = tl.load(a_ptr + i[:, None] * N + i[None, :])
        b = tl.load(b_ptr + i[:, None] * N + i[None, :])
        tl.store(c_ptr + i[:, None] * N + i[None, :], tl.dot(a, b, input_precision="ieee"))

    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(16, 16, generator=gen).to(torch.bfloat16) for _ in range(2))
    c = torch.empty(16, 16)
    dot[(1,)](a, b, c, N=16)
    err = float((c.double() - a.double() @ b.double()).abs().max())
    assert err < 1e-4, err
    return err


def _ops_table(arch: str) -> float:
    """The rocm table: Triton kernels for the six ops (attention bound to the arch's row), reference for the
    rest, with the reference's signatures."""
    import inspect

    from unifer.kernels.triton import ops
    from unifer.ops import reference

    b = _backend(arch)
    native = {"rms_norm", "rotary_embedding", "silu_and_mul", "write_kv", "rotary_write_kv", "paged_attention"}
    assert b.ops.native == native
    for name in native - {"paged_attention"}:
        assert getattr(b.ops, name) is ops()[name], name
    for name in native:
        got = inspect.signature(getattr(b.ops, name)).parameters.values()
        want = inspect.signature(getattr(reference, name)).parameters.values()
        assert [(p.name, p.kind, p.default) for p in got] == [(p.name, p.kind, p.default) for p in want], name
    return 0.0


def _split_kv_through_the_backend(arch: str, dtype: str) -> float:
    """A decode batch over a context past split_min_seq_len: the backend op takes the arch's split-KV path
    (num_segments from its row, 16 or 32), on the conformance suite's NaN-poisoned paged cache."""
    import torch
    from unifer.kernels.triton import lookup
    from unifer.kernels.triton.configs import choose_num_segments as choose
    from unifer_conformance.case import Status, judge
    from unifer_conformance.paged import Step, run_step
    from unifer_conformance.tolerances import tolerance

    b = _backend(arch)
    cfg = lookup("hip", arch).attention
    step = Step(seqs=[(cfg.split_min_seq_len + 37, 1), (3, 1), (70, 1)], q_heads=4, kv_heads=1, head_size=64,
                block_size=16, dtype=getattr(torch, dtype))
    segments = choose(len(step.seqs), cfg.split_min_seq_len + 38, cfg)
    assert segments == cfg.num_segments == (16 if arch == "gfx90a" else 32), segments
    out, want, problems, _ = run_step(b, step, torch.Generator().manual_seed(11))
    assert not problems, problems
    res = judge(out, want, tolerance("paged_attention", dtype))
    assert res.status is Status.PASS, res.message
    return res.max_abs_err


def _conformance_subset(arch: str) -> float:
    """The suite's own runner on a few small op and attention cases: what scripts/ci_rocm.sh runs at scale."""
    from unifer.backends import BackendRegistry
    from unifer_conformance.case import SuiteConfig
    from unifer_conformance.suite import run_suite

    registry = BackendRegistry()
    registry.add(_backend(arch))
    registry.probe_all()
    keyword = "(decode or sliding_window) and bfloat16 and h128 and not long or rms_norm/bfloat16/t7 or claims/gqa"
    report = run_suite("rocm", levels=("ops", "attention"), keyword=keyword, config=SuiteConfig(seed=3),
                       registry=registry)
    assert report["passed"], [c for c in report["cases"] if c["status"] != "PASS"]
    assert report["totals"]["PASS"] >= 8
    assert "verification only" in report["backend"]["device"] and report["backend"]["device_type"] == "cpu"
    assert all(report["coverage"][op] == "triton-interpreter" for op in ("rms_norm", "write_kv", "paged_attention"))
    return 0.0


def _with_arch_config(arch: str, fn):
    """Run one of the shared attention cases with the arch's launch config (the shared cases call the launcher
    directly, which on CPU tensors would otherwise pick the portable defaults)."""

    def run():
        from dataclasses import replace

        from unifer.kernels.triton import lookup, module

        attention = module("attention")
        launcher = attention.unified_attention
        config = lookup("hip", arch).attention

        def with_config(*args, **kwargs):
            # A shared case that asks for the unmasked loop over whole KV tiles gets it on the arch's row.
            asked = kwargs.get("config")
            kwargs["config"] = config if asked is None else replace(
                config, unmasked_full_tiles=asked.unmasked_full_tiles)
            return launcher(*args, **kwargs)

        attention.unified_attention = with_config
        try:
            return fn()
        finally:
            attention.unified_attention = launcher

    return run


def _all_cases() -> dict:
    cases = {
        "interpreter/bf16_cast_rounds_to_nearest_even": _bf16_cast_rounds_to_nearest_even,
        "interpreter/bf16_dot_is_a_product_of_values": _bf16_dot_is_a_product_of_values,
    }
    for arch in ARCHS:
        cases[f"{arch}/ops_table"] = lambda a=arch: _ops_table(a)
        cases[f"{arch}/split_kv[bfloat16]"] = lambda a=arch: _split_kv_through_the_backend(a, "bfloat16")
    cases["gfx942/split_kv[float32]"] = lambda: _split_kv_through_the_backend("gfx942", "float32")
    # The CDNA rows differ only in num_segments, which the shared cases force; one arch covers their shapes.
    for name, fn in shared._all_cases().items():
        if name.startswith("attention["):
            cases[f"gfx942/{name}"] = _with_arch_config("gfx942", fn)
    for name in ("rms_norm_residual[bfloat16]", "rotary_embedding[float32]", "silu_and_mul[float32]",
                 "write_kv[float32]"):
        cases[f"gfx942/{name}"] = shared._all_cases()[name]
    cases["gfx942/conformance_subset"] = lambda: _conformance_subset("gfx942")
    return cases


CASE_NAMES = list(_all_cases())


def _child_main() -> None:
    _backend("gfx942").native_ops()  # applies the interpreter fixes, as the backend does in this mode
    harness.run_cases(_all_cases())


# ----------------------------------------------------------------------------------------------------------------
# pytest side
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    return harness.interpreter_results(HERE, UNIFER_ROCM_INTERPRET="gfx942")


@pytest.mark.parametrize("case", CASE_NAMES)
def test_rocm_kernels_match_reference_in_interpreter(interpreter_results, case):
    harness.check(interpreter_results, case)


if __name__ == "__main__":
    _child_main()
