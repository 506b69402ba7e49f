"""The XPU backend: Intel GPUs through PyTorch's native XPU device.

Kernels, chosen per op: intel-extension-for-pytorch's ``ipex.llm.modules`` where a matching IPEX is installed,
else core's portable Triton kernels where Intel's Triton backend is installed, else the reference.

Verification switch: with ``UNIFER_XPU_VERIFY_ON_CPU=1`` the backend claims a machine without an Intel GPU and
runs the IPEX adapter on CPU tensors (IPEX's CPU build implements the same ``ipex.llm.modules`` API). That is how
CI checks the adapter; it says nothing about Intel GPU kernels, and the availability reason says so.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from unifer.backends import Availability, Backend, Capabilities
from unifer.ops.table import OP_NAMES

from unifer_xpu import comm, ipex_ops

VERIFY_ENV = "UNIFER_XPU_VERIFY_ON_CPU"
# Pins the kernel library, so that each path can be certified on one machine: auto (IPEX, else Triton, per op),
# ipex, triton or reference.
KERNELS_ENV = "UNIFER_XPU_KERNELS"
KERNEL_CHOICES = ("auto", "ipex", "triton", "reference")

# Claims per kernel library of paged attention. "ipex-cpu" is measured by scripts/ci_xpu.sh: IPEX's CPU kernels
# pass every case in all three dtypes (their bfloat16/float16 attention rounds the softmax probabilities to the
# input dtype, FlashAttention-style, which the suite's bounds allow; README). "ipex-xpu" is what IPEX documents
# for Intel GPUs, unverified here: an Intel user's conformance run checks it both ways. "triton" matches the CUDA
# backend (the same kernels); "reference" the CPU's.
CAPS: dict[str, dict[str, Any]] = {
    "ipex-cpu": dict(dtypes=("float32", "bfloat16", "float16"), head_sizes=(32, 64, 80, 96, 128, 256),
                     block_sizes=(8, 16, 32, 64), max_gqa_ratio=16, sliding_window=True, logit_soft_cap=True),
    "ipex-xpu": dict(dtypes=("bfloat16", "float16", "float32"), head_sizes=(64, 80, 96, 128, 256),
                     block_sizes=(16, 32, 64), max_gqa_ratio=16, sliding_window=True, logit_soft_cap=True),
    "triton": dict(dtypes=("bfloat16", "float16", "float32"), head_sizes=(64, 80, 96, 128, 256),
                   block_sizes=(16, 32), max_gqa_ratio=16, sliding_window=True, logit_soft_cap=True),
    "reference": dict(dtypes=("float32", "bfloat16", "float16"), head_sizes=(32, 64, 80, 96, 128, 256),
                      block_sizes=(8, 16, 32), max_gqa_ratio=16, sliding_window=True, logit_soft_cap=True),
}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _major_minor(version: str) -> str:
    m = re.match(r"(\d+)\.(\d+)", version)
    return f"{m.group(1)}.{m.group(2)}" if m else ""


def ipex_status(device_type: str) -> tuple[bool, str]:
    """Whether IPEX's kernels can serve tensors on ``device_type``, from package metadata only: importing IPEX
    takes seconds, and with a mismatched torch its import fails."""
    try:
        version = importlib.metadata.version("intel-extension-for-pytorch")
    except importlib.metadata.PackageNotFoundError:
        return False, "intel-extension-for-pytorch is not installed"
    except Exception as exc:
        return False, f"intel-extension-for-pytorch metadata unreadable: {exc}"
    if _major_minor(version) != _major_minor(torch.__version__):
        return False, (f"intel-extension-for-pytorch {version} needs torch {_major_minor(version)}.*, "
                       f"found {torch.__version__}")
    # Intel's XPU wheels carry a "+xpu" local version; PyPI's CPU build cannot run on an Intel GPU.
    if device_type == "xpu" and "+xpu" not in version:
        return False, f"intel-extension-for-pytorch {version} is a CPU build (an Intel GPU needs the +xpu build)"
    return True, f"intel-extension-for-pytorch {version}"


def triton_xpu_status() -> tuple[bool, str]:
    """Whether Triton can target Intel GPUs: Intel's backend (pytorch-triton-xpu) lives in triton/backends/intel.
    Looks at the installed files only, so no Triton import happens here."""
    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return False, "triton is not installed"
    if not any((Path(p) / "backends" / "intel").is_dir() for p in spec.submodule_search_locations):
        return False, "triton has no Intel XPU backend (PyTorch XPU builds ship it as pytorch-triton-xpu)"
    return True, "triton with Intel's XPU backend"


def select_op_sources(*, ipex: bool, triton: bool) -> dict[str, str]:
    """op -> "ipex" or "triton" for each op with a native kernel; ops left out fall back to the reference.
    IPEX first (Intel's tuned kernels), then Triton. write_kv and paged_attention share the KV-cache layout, so
    they always come from one library: both are in IPEX's set and in Triton's. The fused rotary_write_kv also
    writes the cache, so it is native only where write_kv comes from Triton; otherwise the table runs it as its
    parts."""
    from unifer.kernels.triton import OP_NAMES as TRITON_OPS

    sources = {}
    for op in OP_NAMES:
        if ipex and op in ipex_ops.OP_NAMES:
            sources[op] = "ipex"
        elif triton and op in TRITON_OPS:
            sources[op] = "triton"
    if sources.get("rotary_write_kv") != sources.get("write_kv"):
        sources.pop("rotary_write_kv", None)
    return sources


class XPUBackend(Backend):
    name = "xpu"
    device_type = "xpu"
    priority = 90
    api_version = "1.0"
    version = "0.1.0"

    def __init__(self, *, verify_on_cpu: bool | None = None, kernels: str | None = None) -> None:
        self.verify_on_cpu = _flag(VERIFY_ENV) if verify_on_cpu is None else verify_on_cpu
        if self.verify_on_cpu:  # tensors live in host memory: say so to everything that asks (engine, suite)
            self.device_type = "cpu"  # type: ignore[misc]
        self.kernels = (os.environ.get(KERNELS_ENV, "") if kernels is None else kernels).strip().lower() or "auto"

    @property
    def kernel_device(self) -> str:
        """The device type the kernels see: "cpu" only under the verification switch."""
        return self.device_type

    # identity and availability -------------------------------------------------------------------------------
    def probe(self) -> Availability:
        """Claims only a native PyTorch XPU device. Never touches CUDA; claims a CPU-only machine only under the
        verification switch, and then only when IPEX's CPU build is there to verify."""
        problem = self._kernel_problem()
        if problem:
            return Availability(False, problem)
        if self.verify_on_cpu:
            ok, why = ipex_status("cpu")
            if not ok:
                return Availability(False, f"{VERIFY_ENV}=1 verifies the IPEX adapter on CPU, but {why}")
            return Availability(True, f"VERIFICATION MODE ({VERIFY_ENV}=1): no Intel GPU is used; the IPEX kernel "
                                      f"adapter runs on CPU tensors ({why})")
        try:
            xpu = getattr(torch, "xpu", None)
            if xpu is None:
                return Availability(False, f"torch {torch.__version__} has no torch.xpu (XPU support needs 2.4+)")
            compiled = getattr(xpu, "_is_compiled", None)
            if compiled is not None and not compiled():
                return Availability(False, f"torch {torch.__version__} is not built with XPU support")
            if not xpu.is_available():
                return Availability(False, f"no Intel GPU visible (torch {torch.__version__}, XPU build)")
            count, name = xpu.device_count(), xpu.get_device_name(0)
        except Exception as exc:  # probe never raises
            return Availability(False, f"XPU probe failed: {type(exc).__name__}: {exc}")
        return Availability(True, f"{count} x {name} (torch {torch.__version__}; kernels: {self.kernel_summary()})")

    def _kernel_problem(self) -> str:
        """Why the kernel library asked for with UNIFER_XPU_KERNELS cannot serve ("" when it can)."""
        if self.kernels not in KERNEL_CHOICES:
            return f"{KERNELS_ENV}={self.kernels!r} is not one of {', '.join(KERNEL_CHOICES)}"
        if self.verify_on_cpu and self.kernels not in ("auto", "ipex"):
            return f"{VERIFY_ENV}=1 verifies the IPEX adapter; {KERNELS_ENV}={self.kernels} leaves nothing to verify"
        if self.kernels == "ipex":
            ok, why = ipex_status(self.kernel_device)
        elif self.kernels == "triton":
            ok, why = triton_xpu_status()
        else:
            return ""
        return "" if ok else f"{KERNELS_ENV}={self.kernels}, but {why}"

    def kernel_summary(self) -> str:
        counts = Counter(self.op_sources().values())
        return ", ".join(f"{lib} for {n} ops" for lib, n in sorted(counts.items())) or "reference only"

    # device services -----------------------------------------------------------------------------------------
    def init_device(self) -> None:
        if not self.verify_on_cpu:
            torch.xpu.set_device(torch.xpu.current_device())

    def device_name(self) -> str:
        # Reports carry this string: it names the kernel libraries, since they decide what a report certifies.
        libs = f"torch {torch.__version__}, {ipex_status(self.kernel_device)[1]}"
        if self.verify_on_cpu:
            return f"CPU, verifying the XPU backend's IPEX adapter (no Intel GPU; {libs})"
        try:
            return f"{torch.xpu.get_device_name()} (kernels: {self.kernel_summary()}; {libs})"
        except Exception:
            return "xpu (unavailable)"

    def memory_info(self) -> tuple[int, int]:
        if self.verify_on_cpu:
            page = os.sysconf("SC_PAGE_SIZE")
            return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
        free, total = torch.xpu.mem_get_info()
        return int(free), int(total)

    def kv_cache_budget(self, memory_fraction: float) -> int:
        budget = super().kv_cache_budget(memory_fraction)
        return min(budget, 4 << 30) if self.verify_on_cpu else budget  # host memory is shared: as the CPU backend

    def reset_peak_memory(self) -> None:
        if not self.verify_on_cpu:
            torch.xpu.reset_peak_memory_stats()

    def peak_memory(self) -> int | None:
        return None if self.verify_on_cpu else int(torch.xpu.max_memory_allocated())

    def synchronize(self) -> None:
        if not self.verify_on_cpu:
            torch.xpu.synchronize()

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        if not self.verify_on_cpu:
            torch.xpu.manual_seed_all(seed)

    def empty_cache(self) -> None:
        if not self.verify_on_cpu:
            torch.xpu.empty_cache()

    # kernels -------------------------------------------------------------------------------------------------
    @functools.cached_property
    def _sources(self) -> dict[str, str]:
        ipex_ok = self.kernels in ("auto", "ipex") and ipex_status(self.kernel_device)[0]
        # Triton cannot run CPU tensors, so the verification switch checks IPEX and the reference only.
        triton_ok = self.kernels in ("auto", "triton") and not self.verify_on_cpu and triton_xpu_status()[0]
        return select_op_sources(ipex=ipex_ok, triton=triton_ok)

    def op_sources(self) -> dict[str, str]:
        return dict(self._sources)

    def native_ops(self) -> dict[str, Callable[..., Any]]:
        sources = self.op_sources()
        table: dict[str, Callable[..., Any]] = {}
        if "triton" in sources.values():
            from unifer.kernels.triton import ops as triton_ops

            kernels = triton_ops()
            table.update({op: kernels[op] for op, lib in sources.items() if lib == "triton"})
        table.update({op: getattr(ipex_ops, op) for op, lib in sources.items() if lib == "ipex"})
        return table

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        return self._capabilities

    @functools.cached_property
    def _capabilities(self) -> Capabilities:
        attention = self._sources.get("paged_attention", "reference")
        if attention == "ipex":
            attention = f"ipex-{self.kernel_device}"
        return Capabilities(**CAPS[attention], graph_capture=False, communicator=comm.choose()[0],
                            extra={"attention": attention, "verify_on_cpu": self.verify_on_cpu})

    def kv_cache_shape(self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int) -> tuple[int, ...]:
        if self._sources.get("write_kv") == "ipex":
            return ipex_ops.kv_cache_shape(self.kernel_device, num_blocks, block_size, num_kv_heads, head_dim)
        return super().kv_cache_shape(num_blocks, block_size, num_kv_heads, head_dim)

    # optional services ---------------------------------------------------------------------------------------
    def communicator(self) -> comm.XPUCommunicator | None:
        name, _ = comm.choose()
        return comm.XPUCommunicator(name) if name else None
