"""Every Triton kernel, with the ROCm launch configurations, compiles ahead of time to AMDGCN for gfx90a, gfx942
and gfx950 on this GPU-less machine, within the registers and LDS of each part and without spilling to memory.

Triton's AMD backend links LLVM's AMDGPU target and lld into libtriton, so ``triton.compile`` with
``GPUTarget("hip", arch, 64)`` needs neither a GPU nor a ROCm install. Resource figures come from the metadata
LLVM writes into the assembly (see ``compile_check._hip_resources``).
"""

from __future__ import annotations

import os

import pytest

triton = pytest.importorskip("triton", reason="triton is not installed: the Triton kernels cannot be compiled")

from triton.backends.compiler import GPUTarget  # noqa: E402
from unifer.kernels.triton import compile_check, lookup  # noqa: E402
from unifer.kernels.triton.compile_check import HIP_ARCHS, SHARED_LIMITS, KernelSpec  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="TRITON_INTERPRET=1 replaces JIT kernels by interpreted ones"
)

MAX_VGPRS = 512  # per lane on CDNA2/3/4: 256 arch VGPRs + 256 accumulation VGPRs


def rocm_specs(arch: str) -> list[KernelSpec]:
    """compile_check's representative variants plus what the ROCm backend adds: the arch's own split-KV segment
    count (decode kernel and reduction) and the corners of its Capabilities (largest head with the largest GQA
    group, both block sizes, every dtype and head size in both batch kinds)."""
    cfg = lookup("hip", arch)
    seg = cfg.attention.num_segments
    specs = compile_check.kernel_specs(cfg)

    def attn(dtype, hd, bs, group, decode, segments=1, window=False, cap=False):
        return compile_check._attention_spec(dtype, hd, bs, group, decode=decode, segments=segments, window=window,
                                             soft_cap=cap, configs=cfg)

    specs += [attn("bf16", 128, 16, 8, True, seg, window=True, cap=True), attn("fp16", 256, 32, 16, True, seg),
              attn("bf16", 256, 32, 16, False, window=True, cap=True), attn("fp32", 96, 32, 16, False)]
    specs += [attn(dtype, hd, 16, 2, decode) for dtype in ("bf16", "fp16", "fp32") for hd in (64, 80, 96, 128, 256)
              for decode in (False, True) if (dtype == "bf16" or hd in (80, 256))]
    reduce = next(s for s in specs if s.function == "_reduce_segments_kernel")
    specs.append(KernelSpec(f"reduce_segments[bf16,d256,s{seg}]", reduce.module, reduce.function, reduce.signature,
                            dict(reduce.constexprs, HEAD_DIM=256, HEAD_PAD=256, NUM_SEGMENTS=seg), reduce.num_warps))
    return specs


@pytest.fixture(scope="module", params=HIP_ARCHS)
def built(request):
    arch = request.param
    target = GPUTarget("hip", arch, 64)
    return arch, [compile_check.compile_one(spec, target) for spec in rocm_specs(arch)]


def test_every_kernel_compiles_for_cdna_arch(built):
    arch, results = built
    failures = [r.line() + "\n" + r.error for r in results if not r.ok]
    assert not failures, "\n".join(failures)
    assert {r.kernel.split("[")[0] for r in results} == {
        "attention", "reduce_segments", "write_kv", "rms_norm_residual", "rotary", "rotary_write_kv", "silu_and_mul"}
    for r in results:
        assert r.target == f"hip:{arch}" and r.num_warps and r.extra.get("occupancy", 0) >= 1, r.line()
        assert r.extra.get("hsaco_bytes", 0) > 0, f"{r.kernel}: no linked code object"


def memory_spill(r) -> str:
    """Why ``r`` spills to memory ("" when it does not). SGPRs spilled into VGPR lanes do not touch memory and
    are allowed (their count is in r.extra["sgpr_spill"]); VGPRs spilled to scratch, or any scratch, are not."""
    res = r.extra
    if not {"vgpr_spill", "scratch"} <= set(res):
        return f"no spill figures in the assembly: {res}"
    if res["vgpr_spill"] or res["scratch"]:
        return f"{res['vgpr_spill']} VGPRs spilled, {res['scratch']} bytes of scratch per lane"
    return ""


def test_registers_and_lds_fit_without_spills(built):
    arch, results = built
    limit = SHARED_LIMITS[("hip", arch)]
    for r in results:
        assert {"vgpr", "sgpr", "lds_static"} <= set(r.extra), f"{r.kernel}: {r.extra}"
        assert 0 < r.registers <= MAX_VGPRS, r.line()
        assert r.shared_bytes is not None and r.shared_bytes <= limit, r.line()
        assert not memory_spill(r), f"{r.line()}: {memory_spill(r)}"


def test_launch_configs_keep_two_waves_per_simd(built):
    # The CDNA rows are chosen for this (see configs.py): one wave per SIMD hides no memory latency. Only
    # head size 256 prefill is allowed one wave.
    arch, results = built
    low = [r.line() for r in results if r.kernel.startswith("attention") and r.extra["occupancy"] < 2
           and not ("d256" in r.kernel and "prefill" in r.kernel)]
    assert not low, "\n".join(low)


def test_cdna_rows_are_keyed_by_arch():
    from unifer.kernels.triton.configs import CONFIGS

    for arch in HIP_ARCHS:
        assert ("hip", arch) in CONFIGS and lookup("hip", arch) is CONFIGS[("hip", arch)]
        assert ("hip", arch) in SHARED_LIMITS
    assert lookup("hip", "gfx942").attention.num_segments == 32 and lookup("hip", "gfx90a").attention.num_segments == 16


def _attention_with(arch: str, dtype: str, head: int, **attention):
    from dataclasses import replace

    cfg = lookup("hip", arch)
    cfg = replace(cfg, attention=replace(cfg.attention, **attention))
    spec = compile_check._attention_spec(dtype, head, 16, 1, decode=False, segments=1, window=False, soft_cap=False,
                                         configs=cfg)
    return compile_check.compile_one(spec, GPUTarget("hip", arch, 64))


def test_lds_overflow_fails_the_check():
    """Two pipeline stages of 256-wide float32 K and V tiles need more than 64 KiB of LDS: reported, not passed."""
    r = _attention_with("gfx90a", "fp32", 256, num_stages_prefill=2, tile_prefill=32)
    assert not r.ok and "shared memory" in r.error and r.shared_bytes > SHARED_LIMITS[("hip", "gfx90a")]


def test_register_overflow_shows_as_memory_spill():
    """128x64 float32 prefill tiles, software-pipelined three deep, exceed 512 VGPRs: the spill check must say so."""
    r = _attention_with("gfx90a", "fp32", 128, block_m_prefill=128, tile_prefill=64, num_stages_prefill=3)
    assert r.ok and r.registers == MAX_VGPRS and "VGPRs spilled" in memory_spill(r)


def test_resource_parser_reads_spills():
    asm = """; Occupancy: 3
    .group_segment_fixed_size: 512
    .private_segment_fixed_size: 96
    .sgpr_count:     40
    .sgpr_spill_count: 2
    .vgpr_count:     300
    .vgpr_spill_count: 7
    """
    assert compile_check._hip_resources(asm) == dict(vgpr=300, sgpr=40, vgpr_spill=7, sgpr_spill=2, scratch=96,
                                                     lds_static=512, occupancy=3)


def test_cli_lists_hip_targets(capsys):
    assert compile_check.main(["nonsense"]) == 2
    assert "cuda|hip|all" in capsys.readouterr().out
