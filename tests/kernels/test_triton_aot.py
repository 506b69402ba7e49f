"""Every Triton kernel compiles ahead of time for sm_80, sm_90 and sm_100, without a GPU.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` runs the full pipeline down to a cubin
with the ptxas shipped in the triton wheel; a kernel change that breaks compilation, or needs more shared memory
than the architecture has, fails here.
"""

from __future__ import annotations

import inspect
import os

import pytest

triton = pytest.importorskip("triton", reason="triton is not installed: the Triton kernels cannot be compiled")

from unifer.kernels.triton import compile_check, module  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="TRITON_INTERPRET=1 replaces JIT kernels by interpreted ones"
)


@pytest.mark.parametrize("arch", compile_check.CUDA_ARCHS)
def test_every_kernel_compiles_for_cuda_arch(arch):
    from triton.backends.compiler import GPUTarget

    results = compile_check.check(targets=[GPUTarget("cuda", arch, 32)])
    assert results, "no kernels compiled"
    failures = [r.line() + "\n" + r.error for r in results if not r.ok]
    assert not failures, "\n".join(failures)
    for r in results:
        assert r.shared_bytes is not None
        if r.registers is not None:  # cuobjdump ships with triton; resource info is informational otherwise
            assert 0 < r.registers <= 255, r.line()


def test_specs_cover_every_kernel():
    covered = {(s.module, s.function) for s in compile_check.kernel_specs()}
    for mod in ("attention", "kv_write", "norm", "rotary", "rotary_write_kv", "activation"):
        m = module(mod)
        for name, obj in inspect.getmembers(m):
            if isinstance(obj, triton.runtime.JITFunction) and name.endswith("_kernel"):
                assert (mod, name) in covered, f"{mod}.{name} has no AOT compile spec in compile_check"


def test_builds_take_the_path_a_real_launch_takes():
    """The check builds with the JIT's specialisation (aligned pointers, strides divisible by 16, minus what a
    kernel opts out of): the Hopper decode kernel then stages K/V with asynchronous 16-byte copies, as on the GPU,
    not the scalar loads of the unaligned variant no supported model runs."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from unifer.kernels.triton.configs import lookup

    spec = next(s for s in compile_check.kernel_specs(lookup("cuda", 90))
                if s.name == "attention[bf16,d64,bs16,g4,decode]")
    fn = module("attention")._unified_attention_kernel
    signature = {a: spec.signature.get(a, "constexpr") for a in fn.arg_names}
    attrs = compile_check._jit_attrs(fn, signature)
    marked = {fn.arg_names[i] for (i,) in attrs}
    assert {"q_ptr", "kv_ptr", "kv_stride1", "q_stride0"} <= marked
    assert not marked & {"num_seqs", "bt_stride0", "scale", "num_heads", "HEAD_DIM"}

    def ptx(attrs):
        src = ASTSource(fn=fn, signature=signature, constexprs=dict(spec.constexprs), attrs=attrs)
        options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]

    assert "cp.async" in ptx(attrs) and "ld.global.b16" not in ptx(attrs)
    assert "cp.async" not in ptx({})  # the unaligned variant, which the check used to build


def _spec_ptx(spec, arch: int) -> str:
    """The PTX of one kernel spec, built for ``arch`` as the JIT specialises a real launch."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(module(spec.module), spec.function)
    signature = {a: spec.signature.get(a, "constexpr") for a in fn.arg_names}
    src = ASTSource(fn=fn, signature=signature, constexprs=dict(spec.constexprs),
                    attrs=compile_check._jit_attrs(fn, signature))
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options).asm["ptx"]


@pytest.mark.parametrize("arch", compile_check.CUDA_ARCHS)
def test_dependent_launch_is_compiled_in_from_hopper_on(arch):
    """sm_90 and later rows turn programmatic dependent launch on: every kernel then opens with the grid-dependency
    wait and releases its successor; sm_80 has neither instruction, so its kernels must compile without them."""
    from unifer.kernels.triton.configs import lookup

    cfg = lookup("cuda", arch)
    assert cfg.dependent_launch == (arch >= 90)
    for spec in compile_check.kernel_specs(cfg):
        if spec.function not in ("_rms_norm_kernel", "_reduce_segments_kernel"):
            continue
        ptx = _spec_ptx(spec, arch)
        assert ("griddepcontrol.wait" in ptx) == (arch >= 90), spec.name
        assert ("griddepcontrol.launch_dependents" in ptx) == (arch >= 90), spec.name


# Global loads each kernel may issue before its dependent-launch wait: the attention kernels read the step's
# metadata there (the search over query_start_loc, the sequence's query bounds and length; the merge its token
# count, and with SKIP_EMPTY the attention kernel's four as well, to count the segments that got tiles), which the
# kernel just before them never writes (dependent_launch.py). Anything else must wait.
_LOADS_BEFORE_WAIT = {"_unified_attention_kernel": 4, "_reduce_segments_kernel": 1}
_SKIP_EMPTY_LOADS = {"_reduce_segments_kernel": 4}


def test_nothing_but_metadata_is_read_before_the_wait():
    """In every sm_90 build, no store or asynchronous copy precedes griddepcontrol.wait, and the only global loads
    before it are the attention kernels' metadata loads: a K/V or query load moved above the wait would read what
    the predecessor kernel may still be writing."""
    import re

    from unifer.kernels.triton.configs import lookup

    for spec in compile_check.kernel_specs(lookup("cuda", 90)):
        body = _spec_ptx(spec, 90)
        body = body[body.index(".entry"):]
        before = body[:body.index("griddepcontrol.wait")]
        assert not re.search(r"\bst\.global|\bcp\.async|\batom\.", before), f"{spec.name} writes before the wait"
        loads = len(re.findall(r"\bld\.global", before))
        allowed = _LOADS_BEFORE_WAIT.get(spec.function, 0)
        if spec.constexprs.get("SKIP_EMPTY"):
            allowed += _SKIP_EMPTY_LOADS.get(spec.function, 0)
        assert loads <= allowed, f"{spec.name}: {loads} loads before the wait"
