"""Programmatic dependent launch (Hopper and later), for every Triton kernel of the library.

A decode step is a chain of short kernels; between two of them the GPU idles while the second is launched. Launched
with CUDA's programmatic-stream-serialization attribute, a kernel may be scheduled while the kernel before it in the
stream still runs. Each program then waits until that kernel has finished and its writes are visible
(``griddepcontrol.wait``) before it reads any input: an op cannot know which kernel wrote its inputs. Having
waited, it lets its own successor be scheduled, which then waits likewise. Waiting before any early return keeps
the chain transitive: a kernel finishes only after its predecessor has.

By the same chain, when one of these kernels starts right after another, every program of that predecessor has
passed its own wait, so every kernel before the predecessor has finished: only the predecessor's writes can still
be pending. The attention kernels use that to read a step's metadata (query_start_loc, seq_lens) before their wait,
which takes the search for each program's sequence off the critical path. The runner writes the metadata before
the model's first kernel, never in the kernel just before an attention launch (``unified_attention`` states this
contract).

Off (the default) the kernels compile without the instructions and launch as usual. The config row of a target that
supports it (sm_90 and later) turns it on, where Triton can set the launch attribute (3.4 and later) and the driver
keeps such launches inside CUDA graphs (12.3 and later).
"""

from __future__ import annotations

import ctypes
import functools
import sys

import torch
import triton
import triton.language as tl

from unifer.kernels.triton.util import current_configs

MIN_DRIVER = 12030  # CUDA 12.3: the first driver whose graphs capture programmatic dependent launches


@triton.jit
def wait_for_predecessor(PDL: tl.constexpr):
    # The PTX of triton.language.extra.cuda's gdc_wait and gdc_launch_dependents, inlined so that the kernels still
    # import with a Triton older than those helpers (3.4), where the launch stays off.
    if PDL:
        tl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=tl.int32, is_pure=False,
                                  pack=1)
        tl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [], dtype=tl.int32,
                                  is_pure=False, pack=1)


@functools.cache
def driver_version() -> int:
    """The CUDA driver's version (12030 for 12.3), or 0 where no driver answers."""
    try:
        lib = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
        version = ctypes.c_int()
        return version.value if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 else 0
    except (OSError, AttributeError):
        return 0


@functools.cache
def triton_can_launch() -> bool:
    """Whether Triton's CUDA launcher takes the ``launch_pdl`` option (it refuses options it does not know)."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_pdl" in CUDAOptions.__dataclass_fields__


def launch_options(device: torch.device) -> dict:
    """The ``PDL`` constexpr, and the launch attribute where it is on, for a kernel launched on ``device``."""
    if current_configs(device).dependent_launch and triton_can_launch() and driver_version() >= MIN_DRIVER:
        return {"PDL": True, "launch_pdl": True}
    return {"PDL": False}
