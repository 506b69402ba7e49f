"""Engine configuration (pydantic): validated once, with messages that name the bad field."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DType = Literal["auto", "float32", "bfloat16", "float16"]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Config):
    model: str = Field(description="Path to a local Hugging Face checkpoint folder")
    dtype: DType = "auto"
    max_model_len: int | None = Field(default=None, gt=0, description="Default: the checkpoint's context length")
    seed: int = 0


class CacheConfig(_Config):
    block_size: int = Field(default=16, gt=0)
    num_blocks: int | None = Field(default=None, gt=1, description="Explicit size; overrides memory_fraction")
    memory_fraction: float = Field(
        default=0.9, gt=0.0, le=1.0,
        description="Share of device memory the engine may use (vLLM's gpu_memory_utilization). GPU backends "
                    "count the device's total memory, less weights and the profiled activation peak; host "
                    "backends count the memory free after loading")
    max_cache_bytes: int | None = Field(
        default=None, gt=0, description="Upper bound on the KV cache size in bytes (host-memory backends use it)")
    enable_prefix_caching: bool = True


class SchedulerConfig(_Config):
    max_num_batched_tokens: int = Field(default=2048, gt=0, description="Token budget of one step")
    max_num_seqs: int = Field(default=256, gt=0, description="Most requests running at once")
    enable_chunked_prefill: bool = True


class EngineConfig(_Config):
    model: ModelConfig
    cache: CacheConfig = Field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    backend: str | None = None
    enforce_eager: bool = Field(default=False, description="Never capture or replay graphs (debugging)")
    graph_batch_sizes: list[int] | None = Field(
        default=None, min_length=1,
        description="Decode batch sizes to capture a graph for (vLLM's cuda_graph_sizes). A decode batch is padded "
                    "to the next size; one above the largest runs eagerly, which is many times slower. Default: 1, "
                    "2, 4, 8, then every multiple of 8 up to max_num_seqs (at most 256)")
    mixed_graph_sizes: list[int] | None = Field(
        default=None, min_length=1,
        description="Token counts to capture a graph for steps with prefill tokens (prefills, chunks, mixed with "
                    "decodes). Such a step is padded to the next size; a larger one, and every one by default, "
                    "runs eagerly")
    async_scheduling: bool | None = Field(
        default=None, description="Schedule and launch each step before reading the last one's tokens, so host "
                                  "work overlaps the device's. None: on where the backend has step events")

    @model_validator(mode="after")
    def _graph_sizes_fit(self) -> EngineConfig:
        for size in self.graph_batch_sizes or ():
            if not 0 < size <= self.scheduler.max_num_seqs:
                raise ValueError(f"graph_batch_sizes has {size}: a decode batch holds 1 to max_num_seqs "
                                 f"({self.scheduler.max_num_seqs}) sequences")
        for size in self.mixed_graph_sizes or ():
            if not 0 < size <= self.scheduler.max_num_batched_tokens:
                raise ValueError(f"mixed_graph_sizes has {size}: a step holds 1 to max_num_batched_tokens "
                                 f"({self.scheduler.max_num_batched_tokens}) tokens")
        return self

    @model_validator(mode="after")
    def _budget_fits(self) -> EngineConfig:
        if not self.scheduler.enable_chunked_prefill and self.model.max_model_len is not None \
                and self.scheduler.max_num_batched_tokens < self.model.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({self.scheduler.max_num_batched_tokens}) is smaller than max_model_len "
                f"({self.model.max_model_len}); enable chunked prefill or raise the budget")
        return self
