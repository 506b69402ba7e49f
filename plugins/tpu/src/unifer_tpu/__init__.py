"""unifer's TPU backend: torch-xla with static shapes (bucketed batches) and Pallas ragged paged attention."""

from unifer_tpu.backend import TPUBackend

__all__ = ["TPUBackend"]
