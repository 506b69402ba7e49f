"""The TPU backend: Google TPUs through torch-xla (PJRT_DEVICE=TPU); XLA's CPU client (PJRT_DEVICE=CPU) for
verifying it where no TPU exists.

XLA compiles a graph per input shape, so every step is padded to shape buckets (``pad_batch`` on the host,
``build_metadata`` for metadata built elsewhere), each step's recorded work is cut into one graph at
``end_step``, and ``warm_up`` compiles every bucket before the first request.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from unifer.backends import AttentionMetadata, Availability, Backend, Capabilities

from unifer_tpu import attention, sampling
from unifer_tpu.buckets import MIN_SEQS, MIN_TOKENS, Buckets, ladder
from unifer_tpu.metadata import pad_metadata

# The Pallas kernel wants lane-aligned heads and the TPU has no fast float16; claims beyond these are unverified.
TPU_CAPABILITIES = Capabilities(
    dtypes=("bfloat16", "float32"), head_sizes=(128, 256), block_sizes=(16, 32, 64), max_gqa_ratio=8,
    sliding_window=True, logit_soft_cap=True, graph_capture=True, communicator="xla")
# The XLA-friendly attention has no layout constraint; this is what CI verifies on XLA's CPU client.
XLA_CAPABILITIES = Capabilities(
    dtypes=("float32", "bfloat16", "float16"), head_sizes=(64, 80, 96, 128, 256), block_sizes=(16, 32, 64),
    max_gqa_ratio=8, sliding_window=True, logit_soft_cap=True, graph_capture=True, communicator="xla")


class TPUBackend(Backend):
    name = "tpu"
    device_type = "xla"
    priority = 90
    api_version = "1.0"
    version = "0.1.0"
    inference_mode = False  # torch_xla's functionalization rejects inference tensors (no_grad instead)

    def __init__(self) -> None:
        self.pjrt_device = os.environ.get("PJRT_DEVICE", "").strip().upper()
        # Everything but XLA's CPU client is treated as a TPU (the probe refuses what is neither).
        self.on_tpu = self.pjrt_device != "CPU"
        if not self.on_tpu:
            self.priority = -10  # the CPU client only verifies: auto-selection must never prefer it to "cpu"
        self.buckets = Buckets(ladder(2048, MIN_TOKENS), ladder(256, MIN_SEQS))
        self.warmup_seconds: float | None = None

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        base = TPU_CAPABILITIES if self.on_tpu else XLA_CAPABILITIES
        return base.model_copy(update={"extra": self.stats()})

    # identity and availability -------------------------------------------------------------------------------
    def probe(self) -> Availability:
        try:
            if importlib.util.find_spec("torch_xla") is None:
                return Availability(False, "torch_xla is not installed (on a TPU VM: pip install 'unifer-tpu[tpu]')")
            if self.pjrt_device == "TPU":
                if importlib.util.find_spec("libtpu") is None:
                    return Availability(False, "PJRT_DEVICE=TPU but libtpu is not installed "
                                               "(pip install 'unifer-tpu[tpu]')")
                nodes = glob.glob("/dev/accel*") + glob.glob("/dev/vfio/[0-9]*")
                if not nodes:
                    return Availability(False, "PJRT_DEVICE=TPU but no TPU device node (/dev/accel*, /dev/vfio/N) "
                                               "is visible")
                return Availability(True, f"TPU through torch_xla (PJRT_DEVICE=TPU, {len(nodes)} device nodes)")
            if self.pjrt_device == "CPU":
                return Availability(True, "XLA's CPU client (PJRT_DEVICE=CPU): for verifying this backend without "
                                          "a TPU, not for serving; never chosen automatically")
            if not self.pjrt_device:
                return Availability(False, "PJRT_DEVICE is not set (PJRT_DEVICE=TPU on a TPU VM; CPU to verify on "
                                           "XLA's CPU client)")
            return Availability(False, f"PJRT_DEVICE={self.pjrt_device} is not for this backend (TPU, or CPU "
                                       "for verification)")
        except Exception as exc:  # probe never raises
            return Availability(False, f"TPU probe failed: {type(exc).__name__}: {exc}")

    # device services -----------------------------------------------------------------------------------------
    def init_device(self) -> None:
        import torch_xla  # noqa: F401

    def device(self, index: int = 0) -> torch.device:
        import torch_xla

        return torch_xla.device(index)

    def device_name(self) -> str:
        try:
            import torch_xla
            import torch_xla.runtime as xr

            return (f"XLA {xr.device_type()} x {xr.global_runtime_device_count()} "
                    f"(torch_xla {torch_xla.__version__}, torch {torch.__version__})")
        except Exception:
            return "xla (unavailable)"

    def memory_info(self) -> tuple[int, int]:
        if not self.on_tpu:
            raise NotImplementedError("XLA's CPU client reports no device memory")
        import torch_xla.core.xla_model as xm

        info = xm.get_memory_info(self.device())
        return int(info["bytes_limit"] - info["bytes_used"]), int(info["bytes_limit"])

    def kv_cache_budget(self, memory_fraction: float) -> int:
        if self.on_tpu:
            return super().kv_cache_budget(memory_fraction)
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return min(int(free * memory_fraction), 1 << 30)  # host memory, shared with everything else

    def synchronize(self) -> None:
        import torch_xla
        import torch_xla.core.xla_model as xm

        torch_xla.sync()
        xm.wait_device_ops()

    def seed(self, seed: int) -> None:
        import torch_xla.core.xla_model as xm

        torch.manual_seed(seed)
        xm.set_rng_state(seed)

    def make_generator(self, seed: int) -> torch.Generator:
        gen = torch.Generator()  # XLA has no torch.Generator; seeded rows draw on the host (see sampling.py)
        gen.manual_seed(seed)
        return gen

    # kernels -------------------------------------------------------------------------------------------------
    def native_ops(self) -> dict[str, Callable[..., Any]]:
        attn = attention.pallas_paged_attention if self.on_tpu else attention.paged_attention
        return {"write_kv": attention.write_kv, "paged_attention": attn, "random_sample": sampling.random_sample}

    def kv_cache_shape(self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int) -> tuple[int, ...]:
        return attention.kv_cache_shape(num_blocks, block_size, num_kv_heads, head_dim)

    # static shapes -------------------------------------------------------------------------------------------
    def pad_batch(self, *, num_tokens: int, num_seqs: int, max_blocks: int,
                  num_samples: int) -> tuple[int, int, int, int]:
        tokens, seqs, width = self.buckets.pad(num_tokens, num_seqs, max_blocks)
        return tokens, seqs, width, seqs  # logits rows: one per padded sequence, whoever samples

    def build_metadata(self, metadata: AttentionMetadata) -> AttentionMetadata:
        sizes = self.buckets.pad(metadata.slot_mapping.shape[0], metadata.seq_lens.shape[0],
                                 metadata.block_table.shape[1])
        return pad_metadata(metadata, *sizes)

    def end_step(self) -> None:
        import torch_xla

        torch_xla.sync()  # one graph: the step's KV writes and logits materialise together

    def warm_up(self, *, runner, sampler, max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int,
                block_size: int) -> None:
        from unifer_tpu import warmup

        self.buckets = Buckets.for_limits(max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                                          max_model_len=max_model_len, block_size=block_size)
        if warmup.enabled(self.on_tpu):
            self.warmup_seconds = warmup.compile_buckets(self, runner, sampler)

    def communicator(self):
        from unifer_tpu.comm import XLACommunicator

        return XLACommunicator()

    # observability -------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Compilations so far (process-wide torch_xla counters), the buckets and the warm-up time. Reading the
        counters never imports torch_xla: before it is loaded nothing has compiled."""
        out: dict[str, Any] = {
            "pjrt_device": self.pjrt_device or None,
            "token_buckets": list(self.buckets.tokens), "seq_buckets": list(self.buckets.seqs),
            "block_table_width": self.buckets.block_table_width, "warmup_seconds": self.warmup_seconds,
            "compilations": 0, "cached_compilations": 0, "compile_seconds": 0.0,
        }
        if "torch_xla" in sys.modules:
            import torch_xla.debug.metrics as met

            out["compilations"] = int(met.counter_value("UncachedCompile") or 0)
            out["cached_compilations"] = int(met.counter_value("CachedCompile") or 0)
            data = met.metric_data("CompileTime")
            out["compile_seconds"] = round(data[1] / 1e9, 3) if data else 0.0
        return out
