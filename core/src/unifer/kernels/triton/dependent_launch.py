"""Programmatic dependent launch (Hopper and later), for every Triton kernel of the library.

A decode step is a chain of short kernels; between two of them the GPU idles while the second is launched. Launched
with CUDA's programmatic-stream-serialization attribute, a kernel may be scheduled while the kernel before it in the
stream still runs. Each program then waits, first thing, until that kernel has finished and its writes are visible
(``griddepcontrol.wait``), so no load or store of a kernel ever overlaps its predecessor. Having waited, it lets its
own successor be scheduled, which then waits likewise. Waiting before any early return keeps the chain transitive:
a kernel finishes only after its predecessor has.

Off (the default) the kernels compile without the instructions and launch as usual; the config row of a target that
supports it (sm_90 and later) turns it on.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from unifer.kernels.triton.util import current_configs


@triton.jit
def wait_for_predecessor(PDL: tl.constexpr):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


def launch_options(device: torch.device) -> dict:
    """The ``PDL`` constexpr, and the launch attribute where it is on, for a kernel launched on ``device``."""
    if current_configs(device).dependent_launch:
        return {"PDL": True, "launch_pdl": True}
    return {"PDL": False}
