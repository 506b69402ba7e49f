"""Backend base class, Capabilities, Availability and the attention metadata core hands to kernels."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

# major.minor of the contract. A backend targeting the same major and a minor <= this one is compatible.
# A change that breaks existing backends bumps the major (and is noted in CHANGELOG.md).
API_VERSION = "1.5"


class Unsupported(Exception):
    """Raised by a backend asked for a combination (dtype, head size, ...) its Capabilities do not claim."""


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


class Capabilities(BaseModel):
    """What a backend claims to support; the conformance suite checks every claim both ways."""

    model_config = ConfigDict(frozen=True)

    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16")
    kv_cache_dtypes: tuple[str, ...] = ("auto",)
    head_sizes: tuple[int, ...] = (64, 80, 96, 128, 256)
    block_sizes: tuple[int, ...] = (16,)
    max_gqa_ratio: int = 8
    sliding_window: bool = True
    logit_soft_cap: bool = True
    graph_capture: bool = False
    communicator: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


@dataclass
class AttentionMetadata:
    """One step's batch layout, built by core's runner; the same object is passed to every layer.

    Tokens of all sequences are packed: sequence ``i`` owns ``query[query_start_loc[i]:query_start_loc[i+1]]``,
    which are the last ``query_len`` of its ``seq_lens[i]`` context tokens (cached context comes first).
    """

    query_start_loc: torch.Tensor  # [B + 1] int32
    seq_lens: torch.Tensor  # [B] int32, context including the new tokens
    block_table: torch.Tensor  # [B, max_blocks] int32
    slot_mapping: torch.Tensor  # [tokens] int64, -1 for padding tokens that must not be written
    max_query_len: int
    max_seq_len: int
    # Host copies so that CPU-side loops need no device round trip.
    query_start_loc_host: list[int] | None = None
    seq_lens_host: list[int] | None = None
    # True when max_seq_len only bounds the contexts: a graph captured with this metadata replays at any shorter
    # context, so a launch chosen from max_seq_len (split-KV segments) may find most of its work empty.
    max_seq_len_is_bound: bool = False

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]

    def host_lists(self) -> tuple[list[int], list[int]]:
        qsl = self.query_start_loc_host
        sl = self.seq_lens_host
        return (qsl if qsl is not None else self.query_start_loc.tolist(),
                sl if sl is not None else self.seq_lens.tolist())


class Backend:
    """Base class of every backend. Subclasses set the identity class variables and override what they have.

    Kernels: ``native_ops()`` returns the ops this backend implements natively, by name (see
    ``unifer.ops.OP_NAMES``); every other op falls back to ``unifer.ops.reference``.
    """

    name: ClassVar[str] = ""
    device_type: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    api_version: ClassVar[str] = API_VERSION
    version: ClassVar[str] = "0"
    capabilities: Capabilities = Capabilities()
    # The runner runs the model under torch.inference_mode where this is True, else under torch.no_grad (some
    # devices' lazy-tensor layers reject inference tensors; the results are the same).
    inference_mode: ClassVar[bool] = True

    # identity and availability -------------------------------------------------------------------------------
    def probe(self) -> Availability:
        """Cheap; never raises; never initialises a device that is absent."""
        return Availability(False, "probe() not implemented")

    # device services -----------------------------------------------------------------------------------------
    def device(self, index: int = 0) -> torch.device:
        return torch.device(self.device_type, index) if self.device_type != "cpu" else torch.device("cpu")

    def init_device(self) -> None:
        """Set up the device before the first allocation."""

    def device_name(self) -> str:
        return self.device_type

    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory."""
        raise NotImplementedError(f"backend {self.name!r} does not report memory")

    def kv_cache_budget(self, memory_fraction: float) -> int:
        """Bytes the KV cache may take, called after the model's weights are on the device."""
        free, _ = self.memory_info()
        return int(free * memory_fraction)

    def reset_peak_memory(self) -> None:
        """Start a peak measurement; the engine profiles one full-budget forward pass to size the KV cache."""

    def peak_memory(self) -> int | None:
        """Peak bytes allocated on the device since ``reset_peak_memory``; None where unknown (then no
        activation reserve is subtracted from the KV-cache budget)."""
        return None

    def synchronize(self) -> None:
        """Wait for all queued device work."""

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def empty_cache(self) -> None:
        """Return cached, unused device memory to the device."""

    def make_generator(self, seed: int) -> torch.Generator:
        gen = torch.Generator(device=self.device())
        gen.manual_seed(seed)
        return gen

    # kernels -------------------------------------------------------------------------------------------------
    def native_ops(self) -> dict[str, Callable[..., Any]]:
        return {}

    def op_sources(self) -> dict[str, str]:
        """Optional: op name -> the kernel library behind that native op (e.g. "ipex", "triton"), shown by
        ``unifer backends`` instead of "native". Only ops returned by ``native_ops()`` may be named."""
        return {}

    def kv_cache_shape(self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int) -> tuple[int, ...]:
        """Shape of one layer's KV cache; the layout must match this backend's write_kv and paged_attention."""
        return (2, num_blocks, block_size, num_kv_heads, head_dim)

    @functools.cached_property
    def ops(self):
        from unifer.ops.table import resolve_ops

        return resolve_ops(self.native_ops(), self.op_sources())

    def check_supported(
        self,
        *,
        dtype: torch.dtype,
        head_size: int,
        block_size: int,
        gqa_ratio: int,
        sliding_window: int | None = None,
        soft_cap: float | None = None,
    ) -> None:
        """Raise Unsupported, naming the first unclaimed property, for a combination outside Capabilities."""
        caps = self.capabilities
        dtype_name = str(dtype).removeprefix("torch.")
        problems = [
            (dtype_name not in caps.dtypes, f"dtype {dtype_name} (supported: {', '.join(caps.dtypes)})"),
            (head_size not in caps.head_sizes, f"head size {head_size} (supported: {caps.head_sizes})"),
            (block_size not in caps.block_sizes, f"block size {block_size} (supported: {caps.block_sizes})"),
            (gqa_ratio > caps.max_gqa_ratio, f"GQA ratio {gqa_ratio} (max {caps.max_gqa_ratio})"),
            (bool(sliding_window) and not caps.sliding_window, "sliding-window attention"),
            (bool(soft_cap) and not caps.logit_soft_cap, "logit soft-cap"),
        ]
        for bad, what in problems:
            if bad:
                raise Unsupported(f"backend {self.name!r} does not support {what}")

    # optional services ---------------------------------------------------------------------------------------
    def build_metadata(self, metadata: AttentionMetadata) -> AttentionMetadata:
        """Transform the step's metadata once (e.g. pad to compile buckets). Default: unchanged."""
        return metadata

    def pad_batch(self, *, num_tokens: int, num_seqs: int, max_blocks: int,
                  num_samples: int) -> tuple[int, int, int, int]:
        """(tokens, sequences, block-table columns, logits rows) the runner pads a step's host tensors to, so
        that a backend compiling one graph per shape sees few shapes. Padding is inert: token slot -1, empty
        sequences, null block 0; the sampler ignores logits rows past its batch. Default: no padding."""
        return num_tokens, num_seqs, max_blocks, num_samples

    def end_step(self) -> None:
        """Called by the runner once a step's model work (KV writes, logits) is queued. A lazily tracing
        backend cuts and launches its graph here. Default: nothing."""

    def warm_up(self, *, runner, sampler, max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int,
                block_size: int) -> None:
        """Called once by the engine before the first request, with the runner and sampler it will use and
        the scheduler's limits: a compiling backend fixes its shape buckets and compiles them. Default:
        nothing."""

    def stats(self) -> dict[str, Any]:
        """Counters and gauges of this backend (e.g. a compiling backend's compilations so far), read after each
        engine step; its int and float entries are exported on /metrics as ``unifer_backend_<key>``. Cheap; never
        initialises a device. Default: none."""
        return {}

    def step_event(self):
        """A fresh event for asynchronous scheduling, or None (the default), which turns it off.

        The event has ``record()`` (mark how far the device's queue has got) and ``synchronize()`` (block the host
        until the device is past that mark), as ``torch.Event`` has. With events, the engine launches step
        N+1 before it reads step N's sampled tokens: they reach the host by a non-blocking copy that the event
        guards, and step N+1 takes its input tokens from step N's device tensor. A backend whose ops complete
        before they return (the host waits anyway) gains nothing from it."""
        return None

    def graph_runner(self):
        """An object that captures decode steps, or None when this backend has none.

        It has ``capture(fn) -> replay``: ``fn`` runs the model on static input buffers and returns its output
        tensor; ``replay()`` re-runs the captured work on whatever the buffers hold now and returns the same output
        tensor. The runner captures one per decode batch bucket (and per mixed-step size) and pads batches to them.
        It may also have ``capture_many(fns) -> replays``, one replay per ``fn`` in order; the runner then hands it
        every step it captures in one call (the cuda backend makes a single CUDA stream capture of them all)."""
        return None

    def communicator(self):
        """The tensor-parallel communicator (a ``unifer.backends.comm.Communicator``), or None."""
        return None

    def __repr__(self) -> str:
        return f"<Backend {self.name} ({self.device_type}, priority {self.priority})>"
