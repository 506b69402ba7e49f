"""Verification mode: the ROCm backend's kernels and launch configs run by Triton's CPU interpreter.

No AMD GPU is involved. ``UNIFER_ROCM_INTERPRET=gfx942`` (or ``1`` for gfx942, or another CDNA arch) together
with ``TRITON_INTERPRET=1`` makes the rocm backend claim the CPU, so the conformance suite's op and attention
levels run the very kernels and block shapes an AMD GPU would get, on CPU tensors. It proves the kernels' logic
under those configs, not code generation, timing or memory behaviour on the hardware (the AOT check and a run
of ``unifer conformance --backend rocm`` on a real GPU do that).
"""

from __future__ import annotations

import os

from unifer_rocm.archs import ARCHS, DEFAULT_ARCH

ENV = "UNIFER_ROCM_INTERPRET"


def requested_arch() -> str | None:
    """The arch whose configs the interpreter mode uses, '' for a value naming no known arch, None when off."""
    raw = os.environ.get(ENV, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return None
    if raw in ("1", "true", "yes", "on"):
        return DEFAULT_ARCH
    return raw if raw in ARCHS else ""


def triton_interpret_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")


def kernels_are_interpreted() -> bool:
    """Triton picks interpreter or JIT when a kernel is decorated, i.e. when its module is imported: the env var
    alone is not enough if the kernel modules were imported before it was set."""
    from triton.runtime.interpreter import InterpretedFunction
    from unifer.kernels.triton import module

    return isinstance(module("attention")._unified_attention_kernel, InterpretedFunction)


def patch_interpreter() -> None:
    """Three defects of Triton 3.6's interpreter that fail correct kernels (idempotent). NumPy has no bfloat16,
    so the interpreter keeps bfloat16 as raw uint16 bits, and:

    - ``tl.dot`` of bfloat16 operands multiplies those raw bits;
    - casts from float to bfloat16 truncate, where GPUs round to nearest even (up to twice the error, which the
      conformance tolerances rightly reject), and casts between bfloat16 and float64 reinterpret the bits;
    - a scalar is a 1-element array, and ``range(tensor, ...)`` calls ``int()`` on it, which NumPy >= 2.4
      refuses for arrays with ndim > 0.
    """
    import numpy as np
    import triton.language as tl
    import triton.runtime.interpreter as interp

    if getattr(interp, "_unifer_rocm_patched", False):
        return
    patch_tensor = interp._patch_lang_tensor

    def patch_tensor_scalar_index(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interp._patch_lang_tensor = patch_tensor_scalar_index

    create_dot = interp.InterpreterBuilder.create_dot

    def as_float32(h):
        if h.dtype != tl.bfloat16:
            return h
        # bfloat16 is the top half of a float32: shifting the bits back is exact
        return interp.TensorHandle((h.data.astype(np.uint32) << np.uint32(16)).view(np.float32), tl.float32)

    def create_dot_bf16(self, a, b, d, input_precision, max_num_imprecise_acc):
        return create_dot(self, as_float32(a), as_float32(b), d, input_precision, max_num_imprecise_acc)

    interp.InterpreterBuilder.create_dot = create_dot_bf16

    cast = interp.InterpreterBuilder.cast_impl

    def cast_bf16_exact(self, src, dst_type):
        src_ty, dst_ty = src.dtype.scalar, dst_type.scalar
        if dst_ty == tl.bfloat16 and src_ty.is_floating() and src_ty != tl.bfloat16:
            import torch  # its float -> bfloat16 conversion rounds to nearest even, as the hardware does

            bits = torch.from_numpy(np.array(src.data, order="C")).to(torch.bfloat16).view(torch.int16)
            return interp.TensorHandle(bits.numpy().view(np.uint16), tl.bfloat16)
        if src_ty == tl.bfloat16 and dst_ty.is_floating() and dst_ty != tl.bfloat16:
            wide = as_float32(src).data
            return interp.TensorHandle(wide.astype(interp._get_np_dtype(dst_ty)), dst_ty)
        return cast(self, src, dst_type)

    interp.InterpreterBuilder.cast_impl = cast_bf16_exact
    interp._unifer_rocm_patched = True
