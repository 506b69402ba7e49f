"""Turns a scheduled batch into tensors and runs the model: the only place that builds AttentionMetadata."""

from __future__ import annotations

import numpy as np
import torch

from unifer.backends.backend import AttentionMetadata, Backend


class ModelRunner:
    def __init__(self, model: torch.nn.Module, backend: Backend, kv_caches: list[torch.Tensor],
                 block_size: int, device: torch.device) -> None:
        self.model = model
        self.backend = backend
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device

    def _to_device(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(array).to(device=self.device, dtype=dtype, non_blocking=True)

    @torch.inference_mode()
    def execute(self, batch: list[tuple[list[int], int, int, list[int], bool]]) -> torch.Tensor:
        """Run one step. ``batch`` rows: (all token ids, start, num_new_tokens, block ids, samples).
        Returns float32 logits for the rows that sample, in batch order."""
        bs = self.block_size
        query_lens = np.fromiter((n for _, _, n, _, _ in batch), dtype=np.int64, count=len(batch))
        starts = np.fromiter((s for _, s, _, _, _ in batch), dtype=np.int64, count=len(batch))
        seq_lens = starts + query_lens
        query_start = np.zeros(len(batch) + 1, dtype=np.int64)
        np.cumsum(query_lens, out=query_start[1:])
        total = int(query_start[-1])

        input_ids = np.empty(total, dtype=np.int64)
        positions = np.empty(total, dtype=np.int64)
        slots = np.empty(total, dtype=np.int64)
        max_blocks = max(len(b) for _, _, _, b, _ in batch)
        block_table = np.zeros((len(batch), max_blocks), dtype=np.int32)  # block 0 is the null block
        for i, (tokens, start, n, blocks, _) in enumerate(batch):
            lo, hi = query_start[i], query_start[i + 1]
            input_ids[lo:hi] = tokens[start:start + n]
            pos = np.arange(start, start + n)
            positions[lo:hi] = pos
            block_table[i, :len(blocks)] = blocks
            slots[lo:hi] = block_table[i, pos // bs].astype(np.int64) * bs + pos % bs
        metadata = AttentionMetadata(
            query_start_loc=self._to_device(query_start, torch.int32),
            seq_lens=self._to_device(seq_lens, torch.int32),
            block_table=self._to_device(block_table, torch.int32),
            slot_mapping=self._to_device(slots, torch.int64),
            max_query_len=int(query_lens.max()),
            max_seq_len=int(seq_lens.max()),
            query_start_loc_host=query_start.tolist(),
            seq_lens_host=seq_lens.tolist(),
        )
        metadata = self.backend.build_metadata(metadata)
        hidden = self.model(self._to_device(input_ids, torch.int64), self._to_device(positions, torch.int64),
                            self.kv_caches, metadata)
        sample_rows = [i for i, row in enumerate(batch) if row[4]]
        last = torch.as_tensor(query_start[1:][sample_rows] - 1, device=self.device)
        return self.model.compute_logits(hidden[last])
