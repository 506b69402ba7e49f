"""The ROCm backend: AMD CDNA GPUs through a ROCm (HIP) build of torch, kernels from ``unifer.kernels.triton``.

ROCm torch answers the ``torch.cuda`` API and the "cuda" device string, so the device services look like the CUDA
backend's; what tells the two apart is ``torch.version.hip`` and the device's gfx architecture.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from unifer.backends import Availability, Backend, Capabilities

from unifer_rocm import interpret
from unifer_rocm.archs import ARCHS, DEFAULT_ARCH, base_arch

_SUPPORTED = ", ".join(f"{a.gfx} ({a.family}: {a.products})" for a in ARCHS.values())


class ROCmBackend(Backend):
    name = "rocm"
    device_type = "cuda"
    priority = 100
    api_version = "1.3"
    version = "0.1.0"

    def __init__(self) -> None:
        self.arch: str | None = None  # set by a successful probe
        self.interpret_arch = interpret.requested_arch()
        if self.interpret_arch is not None:
            # Verification mode works on CPU tensors and must never win auto-selection over a real backend.
            self.device_type = "cpu"
            self.priority = -1

    # identity and availability -------------------------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        arch = ARCHS[self.arch or self.interpret_arch or DEFAULT_ARCH]
        if self.interpret_arch is None:
            return arch.capabilities
        return arch.capabilities.model_copy(update=dict(
            graph_capture=False, communicator=None,
            extra=dict(arch.capabilities.extra, mode="Triton CPU interpreter, verification only")))

    def probe(self) -> Availability:
        """Claims only AMD GPUs of a supported CDNA arch on a ROCm build of torch. Checks the build first, so a
        CUDA or CPU-only torch never initialises a device here."""
        if self.interpret_arch is not None:
            return self._probe_interpreter()
        try:
            hip = getattr(torch.version, "hip", None)
            if hip is None:
                kind = f"a CUDA {torch.version.cuda} build" if getattr(torch.version, "cuda", None) else "CPU-only"
                return Availability(False, f"torch {torch.__version__} is {kind}, not a ROCm (HIP) build")
            if not torch.cuda.is_available():
                return Availability(False, f"no AMD GPU visible (torch {torch.__version__}, HIP {hip})")
            count = torch.cuda.device_count()
            props = [torch.cuda.get_device_properties(i) for i in range(count)]
        except Exception as exc:  # probe never raises
            return Availability(False, f"ROCm probe failed: {type(exc).__name__}: {exc}")
        gcn = [getattr(p, "gcnArchName", None) for p in props]
        if not props or not all(gcn):
            return Availability(False, f"torch {torch.__version__} reports no gfx architecture for its devices")
        archs = sorted({base_arch(g) for g in gcn})
        if len(archs) > 1:
            return Availability(False, f"devices of different architectures ({', '.join(archs)}); make one kind "
                                       "visible with HIP_VISIBLE_DEVICES")
        arch, name = archs[0], props[0].name
        if arch not in ARCHS:
            return Availability(False, f"{name} is {arch}; the rocm backend supports {_SUPPORTED}")
        try:
            import triton
            from triton.backends import backends as triton_backends
        except Exception as exc:
            return Availability(False, f"{name} found, but triton is not importable: {exc}")
        if "amd" not in triton_backends:
            return Availability(False, f"{name} found, but triton {triton.__version__} has no AMD backend")
        self.arch = arch
        return Availability(True, f"{count} x {name} ({arch}, {ARCHS[arch].family}, HIP {hip})")

    def _probe_interpreter(self) -> Availability:
        if not self.interpret_arch:
            return Availability(False, f"{interpret.ENV}={os.environ.get(interpret.ENV)!r} names no supported "
                                       f"arch; use 1 or one of {', '.join(ARCHS)}")
        if not interpret.triton_interpret_on():
            return Availability(False, f"{interpret.ENV} is set but TRITON_INTERPRET=1 is not; set both before "
                                       "the process starts (verification mode only)")
        self.arch = self.interpret_arch
        return Availability(True, f"VERIFICATION ONLY, no AMD GPU: Triton CPU interpreter on CPU tensors with the "
                                  f"{self.arch} launch configs ({interpret.ENV})")

    # device services -----------------------------------------------------------------------------------------
    def init_device(self) -> None:
        if self.interpret_arch is None:
            torch.cuda.set_device(torch.cuda.current_device())

    def device_name(self) -> str:
        if self.interpret_arch is not None:
            return f"CPU via the Triton interpreter, {self.interpret_arch} configs (verification only, no AMD GPU)"
        try:
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            return f"{props.name} ({base_arch(props.gcnArchName)}, HIP {torch.version.hip})"
        except Exception:
            return "rocm (unavailable)"

    def memory_info(self) -> tuple[int, int]:
        if self.interpret_arch is not None:
            page = os.sysconf("SC_PAGE_SIZE")
            return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
        free, total = torch.cuda.mem_get_info()
        return int(free), int(total)

    def kv_cache_budget(self, memory_fraction: float) -> int:
        if self.interpret_arch is not None:
            return min(super().kv_cache_budget(memory_fraction), 1 << 30)
        # A share of the whole device less what is already in use (weights, other processes).
        free, total = torch.cuda.mem_get_info()
        return int(total * memory_fraction) - (total - free)

    def reset_peak_memory(self) -> None:
        if self.interpret_arch is None:
            torch.cuda.reset_peak_memory_stats()

    def peak_memory(self) -> int | None:
        return None if self.interpret_arch is not None else int(torch.cuda.max_memory_allocated())

    def synchronize(self) -> None:
        if self.interpret_arch is None:
            torch.cuda.synchronize()

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        if self.interpret_arch is None:
            torch.cuda.manual_seed_all(seed)

    def empty_cache(self) -> None:
        if self.interpret_arch is None:
            torch.cuda.empty_cache()

    def graph_runner(self):
        if self.interpret_arch is not None:
            return None
        from unifer_rocm.services import HIPGraphRunner

        return HIPGraphRunner()

    def step_event(self):
        # ROCm builds of torch serve HIP events through the torch.cuda namespace.
        return None if self.interpret_arch is not None else torch.cuda.Event()

    def warm_up(self, *, runner, sampler, max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int,
                block_size: int) -> None:
        if self.interpret_arch is not None:
            return  # the interpreter compiles nothing
        from unifer.kernels.triton.warmup import warm_up

        warm_up(runner, max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                max_model_len=max_model_len)

    def communicator(self):
        if self.interpret_arch is not None:
            return None
        from unifer_rocm.services import RCCLCommunicator

        return RCCLCommunicator()

    # kernels -------------------------------------------------------------------------------------------------
    def native_ops(self) -> dict[str, Callable[..., Any]]:
        from unifer.kernels.triton import lookup, module, ops

        if self.interpret_arch is not None:
            if not interpret.kernels_are_interpreted():
                raise RuntimeError("the Triton kernels were imported before TRITON_INTERPRET=1 took effect; set it "
                                   "before the process starts")
            interpret.patch_interpreter()
        table = ops()
        # Bind the arch's row explicitly: on a GPU this is the row the launcher would look up anyway; in
        # verification mode (CPU tensors) it makes the interpreter run the CDNA block shapes, not the defaults.
        config = lookup("hip", self.arch or self.interpret_arch or DEFAULT_ARCH).attention
        attention = module("attention")

        def paged_attention(query, kv_cache, metadata, *, scale, sliding_window=None, soft_cap=None):
            return attention.unified_attention(query, kv_cache, metadata, scale=scale,
                                               sliding_window=sliding_window, soft_cap=soft_cap, config=config)

        table["paged_attention"] = paged_attention
        return table

    def op_sources(self) -> dict[str, str]:
        # Reports and `unifer backends` must not let an interpreter run pass for GPU kernels.
        from unifer.kernels.triton import OP_NAMES

        label = "triton" if self.interpret_arch is None else "triton-interpreter"
        return dict.fromkeys(OP_NAMES, label)
