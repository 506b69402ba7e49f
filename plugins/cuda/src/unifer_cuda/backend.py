"""The CUDA backend: NVIDIA GPUs through a CUDA build of torch, kernels from ``unifer.kernels.triton``."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch
from unifer.backends import Availability, Backend, Capabilities

# "HND" stores each page's positions of one KV head together ([2, blocks, kv_heads, block_size, head_dim]);
# "NHD", the default, each position's heads together (the Backend default shape).
KV_LAYOUT_ENV = "UNIFER_CUDA_KV_LAYOUT"


class CUDABackend(Backend):
    name = "cuda"
    device_type = "cuda"
    priority = 100
    api_version = "1.3"
    version = "0.1.0"
    capabilities = Capabilities(
        dtypes=("bfloat16", "float16", "float32"),
        kv_cache_dtypes=("auto",),
        head_sizes=(64, 80, 96, 128, 256),
        block_sizes=(16, 32),
        max_gqa_ratio=16,
        sliding_window=True,
        logit_soft_cap=True,
        graph_capture=True,
        communicator="nccl",
    )

    # identity and availability -------------------------------------------------------------------------------
    def probe(self) -> Availability:
        """Claims only NVIDIA devices: a CUDA build of torch (not ROCm's, which also answers torch.cuda) with a
        visible device. Checks the build first, so a CPU-only or ROCm torch never initialises CUDA here."""
        try:
            if getattr(torch.version, "hip", None) is not None:
                return Availability(False, f"torch {torch.__version__} is a ROCm (HIP) build; use the rocm backend")
            if getattr(torch.version, "cuda", None) is None:
                return Availability(False, f"torch {torch.__version__} is not built with CUDA")
            if not torch.cuda.is_available():
                return Availability(
                    False, f"no CUDA device visible (torch {torch.__version__}, CUDA {torch.version.cuda})"
                )
            count = torch.cuda.device_count()
            name = torch.cuda.get_device_name(0)
            major, minor = torch.cuda.get_device_capability(0)
        except Exception as exc:  # probe never raises
            return Availability(False, f"CUDA probe failed: {type(exc).__name__}: {exc}")
        if major < 8:
            return Availability(
                False, f"{name} has compute capability {major}.{minor}; the Triton kernels need 8.0 (Ampere) or newer"
            )
        try:
            import triton  # noqa: F401
        except Exception as exc:
            return Availability(False, f"{name} found, but triton is not importable: {exc}")
        return Availability(True, f"{count} x {name} (sm_{major}{minor}, CUDA {torch.version.cuda})")

    # device services -----------------------------------------------------------------------------------------
    def init_device(self) -> None:
        torch.cuda.set_device(torch.cuda.current_device())

    def device_name(self) -> str:
        try:
            major, minor = torch.cuda.get_device_capability()
            return f"{torch.cuda.get_device_name()} (sm_{major}{minor}, CUDA {torch.version.cuda})"
        except Exception:
            return "cuda (unavailable)"

    def memory_info(self) -> tuple[int, int]:
        free, total = torch.cuda.mem_get_info()
        return int(free), int(total)

    def kv_cache_budget(self, memory_fraction: float) -> int:
        # vLLM's gpu_memory_utilization: a share of the whole device, less what is in use already (weights,
        # the CUDA context, other processes); the engine then subtracts its profiled activation peak.
        free, total = torch.cuda.mem_get_info()
        return int(total * memory_fraction) - (total - free)

    def reset_peak_memory(self) -> None:
        torch.cuda.reset_peak_memory_stats()

    def peak_memory(self) -> int | None:
        return int(torch.cuda.max_memory_allocated())

    def graph_runner(self):
        from unifer_cuda.graphs import CUDAGraphRunner

        return CUDAGraphRunner()

    def step_event(self):
        return torch.cuda.Event()

    def warm_up(self, *, runner, sampler, max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int,
                block_size: int) -> None:
        from unifer.kernels.triton.warmup import warm_up

        warm_up(runner, max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                max_model_len=max_model_len)

    def communicator(self):
        from unifer_cuda.comm import NCCLCommunicator

        return NCCLCommunicator()

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        torch.cuda.manual_seed_all(seed)

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    # kernels -------------------------------------------------------------------------------------------------
    @functools.cached_property
    def kv_head_major(self) -> bool:
        """Read once, so the cache's shape and the kernels' reading of it cannot disagree."""
        layout = os.environ.get(KV_LAYOUT_ENV, "NHD").upper()
        if layout not in ("NHD", "HND"):
            raise ValueError(f"{KV_LAYOUT_ENV}={layout!r}: expected NHD or HND")
        return layout == "HND"

    def kv_cache_shape(self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int) -> tuple[int, ...]:
        if self.kv_head_major:
            return (2, num_blocks, num_kv_heads, block_size, head_dim)
        return super().kv_cache_shape(num_blocks, block_size, num_kv_heads, head_dim)

    def native_ops(self) -> dict[str, Callable[..., Any]]:
        from unifer.kernels.triton import ops

        return ops(head_major=self.kv_head_major)
