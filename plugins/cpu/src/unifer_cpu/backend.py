"""The CPU backend: always available; native SDPA attention, reference kernels for the rest."""

from __future__ import annotations

import os

import torch
from unifer.backends import Availability, Backend, Capabilities
from unifer.backends.comm import Communicator

from unifer_cpu import attention


class CPUBackend(Backend):
    name = "cpu"
    device_type = "cpu"
    priority = 0
    api_version = "1.0"
    version = "0.1.0"
    capabilities = Capabilities(
        dtypes=("float32", "bfloat16", "float16"),
        head_sizes=(32, 64, 80, 96, 128, 256),
        block_sizes=(8, 16, 32),
        max_gqa_ratio=16,
        sliding_window=True,
        logit_soft_cap=True,
        graph_capture=False,
        communicator="gloo",
    )

    def probe(self) -> Availability:
        return Availability(True, f"{os.cpu_count()} CPU cores")

    def device_name(self) -> str:
        return f"CPU ({os.cpu_count()} cores, torch {torch.__version__})"

    def memory_info(self) -> tuple[int, int]:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return free, pages

    def kv_cache_budget(self, memory_fraction: float) -> int:
        # Host memory is shared with everything else on the machine: cap the default like vLLM's CPU backend.
        return min(super().kv_cache_budget(memory_fraction), 4 << 30)

    def native_ops(self):
        return {"paged_attention": attention.paged_attention}

    def communicator(self) -> Communicator:
        return Communicator()  # gloo, torch.distributed's CPU backend
