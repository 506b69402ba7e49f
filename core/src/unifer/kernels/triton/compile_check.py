"""Ahead-of-time compile every Triton kernel for given targets, without a GPU, and report its resources.

``triton.compile(ASTSource(...), target=GPUTarget(...))`` runs the whole pipeline (TTIR -> TTGIR -> LLVM -> PTX ->
cubin with the ptxas that ships in the triton wheel) on a machine without a device, so a kernel change that no
longer compiles for an architecture fails CI. The target list is a parameter: the CUDA backend checks
``GPUTarget("cuda", 80|90|100, 32)``; the ROCm backend checks ``GPUTarget("hip", "gfx90a|gfx942|gfx950", 64)``
(LLVM's AMDGPU backend and lld are linked into libtriton, so no ROCm install is needed either).

    python -m unifer.kernels.triton.compile_check            # the CUDA targets, one line per build
    python -m unifer.kernels.triton.compile_check hip        # the CDNA targets (or: all)
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field, replace
from typing import Any

from unifer.kernels.triton import module
from unifer.kernels.triton.configs import KernelConfigs, attention_launch, lookup

CUDA_ARCHS: tuple[int, ...] = (80, 90, 100)
HIP_ARCHS: tuple[str, ...] = ("gfx90a", "gfx942", "gfx950")  # CDNA2 (MI200), CDNA3 (MI300), CDNA4 (MI350)
# Shared memory (LDS on HIP) a block may use (opt-in maximum), bytes.
SHARED_LIMITS: dict[tuple[str, Any], int] = {
    ("cuda", 80): 163 * 1024,
    ("cuda", 90): 227 * 1024,
    ("cuda", 100): 227 * 1024,
    ("hip", "gfx90a"): 64 * 1024,
    ("hip", "gfx942"): 64 * 1024,
    ("hip", "gfx950"): 160 * 1024,
}


@dataclass(frozen=True)
class KernelSpec:
    """One kernel variant: the jitted function (by module and name), its argument types and constexprs."""

    name: str
    module: str
    function: str
    signature: dict[str, str]  # runtime argument -> Triton type ("*bf16", "i32", "fp32", ...)
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 1


@dataclass
class BuildResult:
    kernel: str
    target: str
    ok: bool
    registers: int | None = None  # per thread (VGPRs on HIP)
    shared_bytes: int | None = None
    spill_bytes: int | None = None  # local memory per thread on CUDA (spills + stack), scratch on HIP
    shared_limit: int | None = None
    num_warps: int | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        if not self.ok:
            return f"FAIL {self.target:<14} {self.kernel}: {self.error.splitlines()[0] if self.error else ''}"
        return (
            f"ok   {self.target:<14} {self.kernel:<48} regs={self.registers} shared={self.shared_bytes}"
            f"/{self.shared_limit} spill={self.spill_bytes} warps={self.num_warps}"
            + (f" occupancy={self.extra['occupancy']}" if "occupancy" in self.extra else "")
        )


def _launcher_dot_precision(dtype: str) -> str:
    """What the attention launcher passes for this dtype, so a precision a target refuses fails here too."""
    import torch

    from unifer.kernels.triton.util import dot_precision

    return dot_precision({"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype])


def _attention_spec(
    dtype: str,
    head_dim: int,
    block_size: int,
    group: int,
    *,
    decode: bool,
    segments: int,
    window: bool,
    soft_cap: bool,
    configs: KernelConfigs,
    skip_empty: bool = False,
) -> KernelSpec:
    launch = attention_launch(configs.attention, head_dim=head_dim, group=group, decode=decode)
    acc = "fp32"
    p = f"*{dtype}"
    sig = {
        "out_ptr": p,
        "segm_out_ptr": f"*{acc}",
        "segm_max_ptr": f"*{acc}",
        "segm_sum_ptr": f"*{acc}",
        "q_ptr": p,
        "kv_ptr": p,
        "block_table_ptr": "*i32",
        "seq_lens_ptr": "*i32",
        "query_start_ptr": "*i32",
        "scale": "fp32",
        "soft_cap": "fp32",
        "sliding_window": "i32",
        "num_seqs": "i32",
        "num_heads": "i32",
        "q_stride0": "i32",
        "q_stride1": "i32",
        "o_stride0": "i32",
        "o_stride1": "i32",
        "kv_stride0": "i64",
        "kv_stride1": "i32",
        "kv_stride2": "i32",
        "kv_stride3": "i32",
        "bt_stride0": "i32",
    }
    import triton.language as tl

    consts = dict(
        HEAD_DIM=head_dim,
        HEAD_PAD=launch["HEAD_PAD"],
        BLOCK_SIZE=block_size,
        TILE=launch["TILE"],
        GROUP=group,
        BLOCK_M=launch["BLOCK_M"],
        BLOCK_Q=launch["BLOCK_Q"],
        USE_SOFT_CAP=soft_cap,
        USE_WINDOW=window,
        NUM_SEGMENTS=segments,
        DOT_PREC=_launcher_dot_precision(dtype),
        ACC=tl.float32,
        MASK_ALL=launch["MASK_ALL"],
        SKIP_EMPTY=skip_empty,
        PDL=configs.dependent_launch,
    )
    variant = (
        f"attention[{dtype},d{head_dim},bs{block_size},g{group},{'decode' if decode else 'prefill'}"
        f"{',split' + str(segments) if segments > 1 else ''}{',window' if window else ''}{',cap' if soft_cap else ''}"
        f"{',skip_empty' if skip_empty else ''}]"
    )
    return KernelSpec(
        variant, "attention", "_unified_attention_kernel", sig, consts, launch["num_warps"], launch["num_stages"]
    )


def kernel_specs(configs: KernelConfigs | None = None, *, full: bool = False) -> list[KernelSpec]:
    """Representative variants of every kernel. ``full`` adds more head sizes and dtypes to the attention set."""
    import triton.language as tl

    configs = configs or lookup(None, None)
    specs = [
        _attention_spec("bf16", 128, 16, 4, decode=False, segments=1, window=False, soft_cap=False, configs=configs),
        _attention_spec("bf16", 64, 16, 4, decode=False, segments=1, window=False, soft_cap=False, configs=configs),
        _attention_spec("bf16", 64, 16, 4, decode=True, segments=1, window=False, soft_cap=False, configs=configs),
        _attention_spec("bf16", 64, 16, 4, decode=True, segments=16, window=True, soft_cap=True, configs=configs),
        # The empty-segment exit (``AttentionConfig.skip_empty_segments``) of graph launches, whatever the row says.
        _attention_spec("bf16", 64, 16, 4, decode=True, segments=64, window=False, soft_cap=False, configs=configs,
                        skip_empty=True),
        _attention_spec("fp16", 80, 32, 1, decode=False, segments=1, window=True, soft_cap=False, configs=configs),
        _attention_spec("bf16", 256, 16, 8, decode=True, segments=1, window=False, soft_cap=True, configs=configs),
    ]
    if full:
        for dtype in ("bf16", "fp16", "fp32"):
            for hd in (64, 80, 96, 128, 256):
                for decode in (False, True):
                    specs.append(
                        _attention_spec(
                            dtype,
                            hd,
                            16,
                            4,
                            decode=decode,
                            segments=16 if decode else 1,
                            window=False,
                            soft_cap=False,
                            configs=configs,
                        )
                    )
    reduce_signature = {
        "out_ptr": "*bf16",
        "segm_out_ptr": "*fp32",
        "segm_max_ptr": "*fp32",
        "segm_sum_ptr": "*fp32",
        "seq_lens_ptr": "*i32",
        "query_start_ptr": "*i32",
        "sliding_window": "i32",
        "num_seqs": "i32",
        "num_heads": "i32",
        "o_stride0": "i32",
        "o_stride1": "i32",
    }
    decode_launch = attention_launch(configs.attention, head_dim=64, group=4, decode=True)
    specs += [
        KernelSpec(
            f"reduce_segments[bf16,d{head_dim},s{segments}{',skip_empty' if skip else ''}]",
            "attention",
            "_reduce_segments_kernel",
            reduce_signature,
            dict(HEAD_DIM=head_dim, HEAD_PAD=head_dim, NUM_SEGMENTS=segments, BLOCK_Q=decode_launch["BLOCK_Q"],
                 TILE=decode_launch["TILE"], USE_WINDOW=False, SKIP_EMPTY=skip),
            configs.attention.reduce_num_warps,
        )
        for head_dim, segments, skip in ((128, 16, False), (64, 64, True))
    ]
    specs += [
        KernelSpec(
            "write_kv[bf16,kh8,d128,bs16]",
            "kv_write",
            "_write_kv_kernel",
            {
                "key_ptr": "*bf16",
                "value_ptr": "*bf16",
                "kv_ptr": "*bf16",
                "slot_ptr": "*i64",
                **{n: "i32" for n in ("k_stride0", "k_stride1", "v_stride0", "v_stride1")},
                "kv_stride0": "i64",
                "kv_stride1": "i32",
                "kv_stride2": "i32",
                "kv_stride3": "i32",
            },
            dict(NUM_KV_HEADS=8, HEAD_DIM=128, KH_PAD=8, HEAD_PAD=128, BLOCK_SIZE=16),
            configs.elementwise.num_warps,
        ),
        KernelSpec(
            "rms_norm_residual[bf16,2048]",
            "norm",
            "_rms_norm_kernel",
            {
                "x_ptr": "*bf16",
                "res_ptr": "*bf16",
                "w_ptr": "*bf16",
                "out_ptr": "*bf16",
                "sum_ptr": "*bf16",
                "x_stride": "i32",
                "res_stride": "i32",
                "out_stride": "i32",
                "sum_stride": "i32",
                "n_cols": "i32",
                "eps": "fp32",
            },
            dict(BLOCK=2048, HAS_RESIDUAL=True, ACC=tl.float32),
            8,
        ),
        KernelSpec(
            "rotary[bf16,h32,kh8,d64]",
            "rotary",
            "_rotary_kernel",
            {
                "pos_ptr": "*i64",
                "q_ptr": "*bf16",
                "k_ptr": "*bf16",
                "cache_ptr": "*fp32",
                "qo_ptr": "*bf16",
                "ko_ptr": "*bf16",
                **{
                    n: "i32"
                    for n in (
                        "q_stride0",
                        "q_stride1",
                        "k_stride0",
                        "k_stride1",
                        "qo_stride0",
                        "qo_stride1",
                        "ko_stride0",
                        "ko_stride1",
                        "cache_stride0",
                    )
                },
            },
            dict(NUM_Q_HEADS=32, NUM_K_HEADS=8, HALF=32, QH_PAD=32, KH_PAD=8, HALF_PAD=32, ACC=tl.float32),
            configs.elementwise.num_warps,
        ),
        KernelSpec(
            "rotary_write_kv[bf16,h32,kh8,d64,bs16]",
            "rotary_write_kv",
            "_rotary_write_kv_kernel",
            {
                "pos_ptr": "*i64",
                "q_ptr": "*bf16",
                "k_ptr": "*bf16",
                "v_ptr": "*bf16",
                "cos_sin_ptr": "*fp32",
                "qo_ptr": "*bf16",
                "kv_ptr": "*bf16",
                "slot_ptr": "*i64",
                **{n: "i32" for n in ("q_stride0", "q_stride1", "k_stride0", "k_stride1", "v_stride0", "v_stride1",
                                      "qo_stride0", "qo_stride1", "cos_sin_stride0")},
                "kv_stride0": "i64",
                "kv_stride1": "i32",
                "kv_stride2": "i32",
                "kv_stride3": "i32",
            },
            dict(NUM_Q_HEADS=32, NUM_KV_HEADS=8, HALF=32, HEAD_DIM=64, QH_PAD=32, KH_PAD=8, HALF_PAD=32, HEAD_PAD=64,
                 BLOCK_SIZE=16, ACC=tl.float32),
            configs.elementwise.num_warps,
        ),
        KernelSpec(
            "silu_and_mul[bf16,1024]",
            "activation",
            "_silu_and_mul_kernel",
            {"x_ptr": "*bf16", "out_ptr": "*bf16", "x_stride": "i32", "out_stride": "i32", "d": "i32"},
            dict(BLOCK=1024, ACC=tl.float32),
            configs.elementwise.num_warps,
        ),
    ]
    # Every kernel opens with the dependent-launch wait, compiled in where the target's row turns it on.
    return [replace(s, constexprs={**s.constexprs, "PDL": configs.dependent_launch}) for s in specs]


def _target_label(target) -> str:
    return f"{target.backend}:{'sm_' + str(target.arch) if target.backend == 'cuda' else target.arch}"


def _cuda_resources(cubin: bytes) -> dict[str, int]:
    """REG / SHARED / LOCAL / STACK from the cuobjdump that ships in the triton wheel."""
    from triton import knobs

    tool = knobs.nvidia.cuobjdump.path
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        text = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True, timeout=60).stdout
    finally:
        os.unlink(path)
    return {k: int(v) for k, v in re.findall(r"\b(REG|SHARED|LOCAL|STACK):(\d+)", text)}


def _hip_resources(asm: str) -> dict[str, int]:
    """Register, LDS, spill and occupancy figures that LLVM's AMDGPU backend writes into the assembly (the
    loader's n_regs/n_spills need a device, these do not). vgpr counts arch + accumulation VGPRs (512 per lane
    on CDNA); sgpr_spill is SGPRs spilled to VGPR lanes, vgpr_spill and scratch go to memory."""
    found = {}
    for key, pattern in (
        ("vgpr", r"\.vgpr_count:\s*(\d+)"),
        ("agpr", r"\.agpr_count:\s*(\d+)"),
        ("sgpr", r"\.sgpr_count:\s*(\d+)"),
        ("vgpr_spill", r"\.vgpr_spill_count:\s*(\d+)"),
        ("sgpr_spill", r"\.sgpr_spill_count:\s*(\d+)"),
        ("scratch", r"\.private_segment_fixed_size:\s*(\d+)"),
        ("lds_static", r"\.group_segment_fixed_size:\s*(\d+)"),
        ("occupancy", r"; Occupancy:\s*(\d+)"),
    ):
        m = re.search(pattern, asm)
        if m:
            found[key] = int(m.group(1))
    return found


def _jit_attrs(fn, signature: dict[str, str]) -> dict:
    """The specialisation the JIT gives a real launch: pointers 16-byte aligned (torch's allocations and the views
    the model passes) and strides divisible by 16 (rows of head and hidden sizes, all multiples of 16), except
    arguments the kernel opts out. Without it a build takes the unaligned path: scalar loads, no asynchronous
    copies, other registers and shared memory than the GPU runs."""
    opted_out = set(getattr(fn, "do_not_specialize", ()) or ())
    attrs = {}
    for index, (name, kind) in enumerate(signature.items()):
        if name in opted_out or index in opted_out:
            continue
        if kind.startswith("*") or ("stride" in name and kind.startswith("i")):
            attrs[(index,)] = [["tt.divisibility", 16]]
    return attrs


def compile_one(spec: KernelSpec, target) -> BuildResult:
    import triton
    from triton.compiler import ASTSource

    label = _target_label(target)
    fn = getattr(module(spec.module), spec.function)
    if not isinstance(fn, triton.runtime.JITFunction):
        error = f"{spec.function} is not a JITFunction (TRITON_INTERPRET set?)"
        return BuildResult(spec.name, label, False, error=error)
    signature = dict(spec.signature)
    for name in spec.constexprs:
        signature[name] = "constexpr"
    missing = [a for a in fn.arg_names if a not in signature]
    if missing:
        return BuildResult(spec.name, label, False, error=f"spec lacks arguments {missing}")
    signature = {a: signature[a] for a in fn.arg_names}
    src = ASTSource(fn=fn, signature=signature, constexprs=dict(spec.constexprs), attrs=_jit_attrs(fn, signature))
    try:
        compiled = triton.compile(
            src, target=target, options={"num_warps": spec.num_warps, "num_stages": spec.num_stages}
        )
    except Exception as exc:  # a compile error is a result, not a crash of the check
        return BuildResult(spec.name, label, False, error=f"{type(exc).__name__}: {exc}")
    md = compiled.metadata
    result = BuildResult(
        spec.name,
        label,
        True,
        shared_bytes=getattr(md, "shared", None),
        num_warps=getattr(md, "num_warps", spec.num_warps),
        shared_limit=SHARED_LIMITS.get((target.backend, target.arch)),
    )
    try:
        if target.backend == "cuda" and "cubin" in compiled.asm:
            res = _cuda_resources(compiled.asm["cubin"])
            result.registers = res.get("REG")
            result.spill_bytes = res.get("LOCAL")
            result.extra = res
        elif target.backend == "hip" and "amdgcn" in compiled.asm:
            res = _hip_resources(compiled.asm["amdgcn"])
            res["hsaco_bytes"] = len(compiled.asm.get("hsaco") or b"")  # the linked code object a GPU would load
            result.registers = res.get("vgpr")
            result.spill_bytes = res.get("scratch")
            if result.shared_bytes is not None:  # Triton's dynamic LDS plus any static LDS of the kernel
                result.shared_bytes += res.get("lds_static", 0)
            result.extra = res
    except Exception as exc:  # resource dump is informational
        result.extra = {"resource_error": repr(exc)}
    limit, used = result.shared_limit, result.shared_bytes
    if limit is not None and used is not None and used > limit:
        result.ok = False
        result.error = f"needs {result.shared_bytes} bytes of shared memory, the limit is {result.shared_limit}"
    return result


def cuda_targets(archs: tuple[int, ...] = CUDA_ARCHS):
    from triton.backends.compiler import GPUTarget

    return [GPUTarget("cuda", arch, 32) for arch in archs]


def hip_targets(archs: tuple[str, ...] = HIP_ARCHS):
    from triton.backends.compiler import GPUTarget

    return [GPUTarget("hip", arch, 64) for arch in archs]


def check(targets=None, specs: list[KernelSpec] | None = None, *, use_target_configs: bool = True) -> list[BuildResult]:
    """Compile every spec for every target. ``targets`` default: CUDA sm_80, sm_90, sm_100. With
    ``use_target_configs`` the specs are built from each target's launch-config row (see ``configs``)."""
    targets = targets if targets is not None else cuda_targets()
    results = []
    for target in targets:
        target_specs = specs
        if target_specs is None:
            cfgs = lookup(target.backend, target.arch) if use_target_configs else None
            target_specs = kernel_specs(cfgs)
        for spec in target_specs:
            results.append(compile_one(spec, target))
    return results


def main(argv: list[str] | None = None) -> int:
    import sys

    which = (argv if argv is not None else sys.argv[1:]) or ["cuda"]
    targets = []
    for name in which:
        if name not in ("cuda", "hip", "all"):
            print(f"usage: python -m unifer.kernels.triton.compile_check [cuda|hip|all]; got {name!r}")
            return 2
        targets += cuda_targets() if name in ("cuda", "all") else []
        targets += hip_targets() if name in ("hip", "all") else []
    results = check(targets)
    for r in results:
        print(r.line())
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
