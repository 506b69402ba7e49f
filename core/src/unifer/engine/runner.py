"""Turns a scheduled batch into tensors and runs the model: the only place that builds AttentionMetadata."""

from __future__ import annotations

import functools
import inspect

import numpy as np
import torch

from unifer.backends.backend import AttentionMetadata, Backend


def decode_buckets(max_num_seqs: int) -> list[int]:
    """Batch sizes that decode graphs are captured for: 1, 2, 4, 8, then every multiple of 8 up to the cap."""
    cap = min(max_num_seqs, MAX_GRAPH_BATCH)
    sizes = [b for b in (1, 2, 4) if b < cap] + list(range(8, cap + 1, 8))
    return sorted(set(sizes) | {cap})


MAX_GRAPH_BATCH = 256  # larger decode batches are compute bound: a graph saves little there


def _fill_placeholders(ids: torch.Tensor, prev_tokens: torch.Tensor) -> None:
    """Replace each placeholder -(j + 1) in ``ids`` by ``prev_tokens[j]``, on the device."""
    rows = (-1 - ids).clamp_(min=0)
    ids.copy_(torch.where(ids < 0, prev_tokens[rows], ids))


def _takes_out(compute_logits) -> bool:
    """Whether a model's ``compute_logits`` writes into a given ``out`` (a model provider's may not)."""
    try:
        return "out" in inspect.signature(compute_logits).parameters
    except (TypeError, ValueError):
        return False


def _no_grad(method):
    """torch.inference_mode, or torch.no_grad where the backend opts out of inference tensors."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with torch.no_grad(), torch.inference_mode(self.backend.inference_mode):
            return method(self, *args, **kwargs)

    return run


class ModelRunner:
    def __init__(self, model: torch.nn.Module, backend: Backend, kv_caches: list[torch.Tensor],
                 block_size: int, device: torch.device) -> None:
        self.model = model
        self.backend = backend
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self._graphs: dict[int, object] = {}  # batch bucket -> replay callable returning float32 logits
        # The decode graphs' logits, one buffer for all buckets: a graph's output lives as long as the graph, and
        # with an output each, the 35 default buckets held ~2 GiB of logits at a 128k vocabulary.
        self._logits: torch.Tensor | None = None
        self._static: dict[str, torch.Tensor] = {}
        self._rows = np.zeros(0, dtype=np.int64)  # 0 .. top - 1: every row's own host id, as its default source
        # Two pinned host twins of _static's flat buffer (and their numpy views), used in turn: under asynchronous
        # scheduling a replay's inputs are staged while the previous replay's copy may still be queued.
        self._host: list[tuple[torch.Tensor, dict[str, np.ndarray]]] = []
        self._turn = 0
        # Steps with prefill tokens, when captured: token-count bucket -> replay returning the final hidden states.
        self._mixed_graphs: dict[int, object] = {}
        self._mixed: dict[str, torch.Tensor] = {}
        self._mixed_host: list[tuple[torch.Tensor, dict[str, np.ndarray]]] = []
        self._mixed_turn = 0

    # decode graphs --------------------------------------------------------------------------------------------
    @property
    def graph_buckets(self) -> list[int]:
        return sorted(self._graphs)

    @torch.inference_mode()
    def capture_graphs(self, graph_runner, max_num_seqs: int, max_model_len: int, sizes: list[int] | None = None,
                       mixed_sizes: list[int] | None = None) -> None:
        """Capture the decode graphs (one per batch bucket of ``sizes``, default ``decode_buckets(max_num_seqs)``)
        and, with ``mixed_sizes``, the mixed-step graphs, each kind largest first so that smaller ones reuse the
        memory pool. All in one call of the graph runner's ``capture_many`` where it has one (see
        ``Backend.graph_runner``), else one ``capture`` each, in the same order."""
        steps = self._decode_steps(max_num_seqs, max_model_len, sizes)
        if mixed_sizes:
            steps += self._mixed_steps(mixed_sizes, max_num_seqs, max_model_len)
        fns = [fn for _, _, fn in steps]
        many = getattr(graph_runner, "capture_many", None)
        replays = many(fns) if many is not None else [graph_runner.capture(fn) for fn in fns]
        for (graphs, key, _), replay in zip(steps, replays, strict=True):
            graphs[key] = replay

    def _decode_steps(self, max_num_seqs: int, max_model_len: int, sizes: list[int] | None):
        """(graphs table, bucket, step to capture) per decode bucket, largest first.

        Every bucket's metadata claims ``max_model_len`` as its longest context, so kernels that choose their
        launch from it (split-KV) pick a launch valid for any context the replay will see."""
        buckets = sorted(set(sizes)) if sizes else decode_buckets(max_num_seqs)
        top = buckets[-1]
        max_blocks = -(-max_model_len // self.block_size)
        st, self._host = self._static_inputs(top, max_num_seqs, max_blocks)
        self._static = st
        st["query_start"] = torch.arange(top + 1, dtype=torch.int32, device=self.device)
        st["seq_lens"].fill_(1)
        self._rows = np.arange(top, dtype=np.int64)
        st["source"].copy_(torch.from_numpy(self._rows))
        if _takes_out(self.model.compute_logits):
            self._logits = torch.empty(top, self.model.spec.vocab_size, dtype=torch.float32, device=self.device)
        steps = []
        for b in reversed(buckets):
            metadata = self.backend.build_metadata(AttentionMetadata(
                query_start_loc=st["query_start"][:b + 1], seq_lens=st["seq_lens"][:b],
                block_table=st["block_table"][:b], slot_mapping=st["slots"][:b], max_query_len=1,
                max_seq_len=max_model_len, max_seq_len_is_bound=True))
            steps.append((self._graphs, b, functools.partial(self._decode_logits, b, metadata)))
        return steps

    def _static_inputs(self, top: int, prev: int, max_blocks: int, seqs: int | None = None):
        """A replay's inputs: one flat device buffer, so that they go in one asynchronous copy, and two pinned
        host twins used in turn (under asynchronous scheduling a replay's inputs are staged while the previous
        replay's copy may still be queued). Returns the device views (and "flat") and the twins' numpy views."""
        num_bytes = 8 * (4 * top + prev + (seqs or 0))
        num_bytes += 4 * (top * (1 + max_blocks) if seqs is None else 2 * seqs + 1 + seqs * max_blocks)
        flat = torch.zeros(num_bytes, dtype=torch.uint8, device=self.device)
        hosts = [torch.zeros(num_bytes, dtype=torch.uint8, pin_memory=self.device.type != "cpu") for _ in range(2)]
        twins = [(h, {k: v.numpy() for k, v in self._views(h, top, prev, max_blocks, seqs).items()}) for h in hosts]
        return {"flat": flat, **self._views(flat, top, prev, max_blocks, seqs)}, twins

    @staticmethod
    def _views(flat: torch.Tensor, top: int, prev: int, max_blocks: int,
               seqs: int | None = None) -> dict[str, torch.Tensor]:
        """int64: the host's token ids (``top``), the previous step's sampled tokens (``prev``), then positions,
        slots and each token's source among the first two (``top`` each), then for a mixed step the tokens whose
        logits are sampled (``seqs``). int32: a mixed step's query starts (``seqs`` + 1), then seq lens and the
        block table, a row per sequence (a decode step's ``top`` rows)."""
        wide_len = 4 * top + prev + (seqs or 0)
        wide = flat[:8 * wide_len].view(torch.int64)
        narrow = flat[8 * wide_len:].view(torch.int32)
        rest = wide[top + prev:top + prev + 3 * top].view(3, top)
        views = {"tokens": wide[:top + prev], "prev": wide[top:top + prev], "positions": rest[0], "slots": rest[1],
                 "source": rest[2]}
        if seqs is None:
            return views | {"seq_lens": narrow[:top], "block_table": narrow[top:].view(top, max_blocks)}
        return views | {"sampled": wide[4 * top + prev:], "query_start": narrow[:seqs + 1],
                        "seq_lens": narrow[seqs + 1:2 * seqs + 1],
                        "block_table": narrow[2 * seqs + 1:].view(seqs, max_blocks)}

    def _decode_logits(self, b: int, metadata: AttentionMetadata) -> torch.Tensor:
        # Each row's token is gathered on the device, from the host's ids or the previous step's sampled tokens,
        # so a step whose tokens the host has not read yet costs one copy before the replay and no other launch.
        # The LM head is captured too: at batch 1 its launch and the float cast are a visible part of a step.
        st = self._static
        input_ids = st["tokens"][st["source"][:b]]
        hidden = self.model(input_ids, st["positions"][:b], self.kv_caches, metadata)
        if self._logits is None:
            return self.model.compute_logits(hidden)
        return self.model.compute_logits(hidden, out=self._logits[:b])

    def _replay_decode(self, batch, prev_tokens: torch.Tensor | None) -> torch.Tensor | None:
        n = len(batch)
        bucket = next((b for b in sorted(self._graphs) if b >= n), None)
        if bucket is None:
            return None
        st = self._static
        top = st["block_table"].shape[0]
        # This buffer was last copied from two replays ago: the host has read that step's sampled tokens since, so
        # the device is past that copy.
        host, view = self._host[self._turn]
        self._turn ^= 1
        ids, pos, slots, source, seq_lens = (view[k] for k in ("tokens", "positions", "slots", "source", "seq_lens"))
        ids[:top].fill(0)
        pos.fill(0)
        slots.fill(-1)  # padding rows write nothing
        source[:] = self._rows
        seq_lens.fill(1)  # and read one slot of the null block
        table = view["block_table"][:bucket]
        table.fill(0)
        bs = self.block_size
        for i, (tokens, start, _, blocks, _) in enumerate(batch):
            token = tokens[start]
            if token < 0:  # placeholder -(j + 1): row j of prev_tokens, copied into the "prev" rows below
                source[i] = top - 1 - token
            else:
                ids[i] = token
            pos[i], seq_lens[i] = start, start + 1
            table[i, :len(blocks)] = blocks
            slots[i] = blocks[start // bs] * bs + start % bs
        self._send(st, host, view, bucket, prev_tokens)
        return self._graphs[bucket]()[:n]

    @staticmethod
    def _send(st: dict, host: torch.Tensor, view: dict, table_rows: int, prev_tokens: torch.Tensor | None) -> None:
        """Queue the staged host twin's copy into the flat device buffer, in one asynchronous copy that leaves out
        the block-table rows past ``table_rows``, then the previous step's sampled tokens (device to device)."""
        table = view["block_table"]  # (an empty slice's ctypes.data is its base's, so no table[rows:] here)
        used = table.ctypes.data - view["tokens"].ctypes.data + table_rows * table.strides[0]
        st["flat"][:used].copy_(host[:used], non_blocking=True)
        if prev_tokens is not None:  # a placeholder names a sequence's row; rows past max_num_seqs are padding
            rows = min(prev_tokens.shape[0], st["prev"].shape[0])
            st["prev"][:rows].copy_(prev_tokens[:rows])

    # mixed-step graphs ----------------------------------------------------------------------------------------
    def _mixed_steps(self, sizes: list[int], max_num_seqs: int, max_model_len: int):
        """(graphs table, token bucket, step to capture) per size, largest first: the forward pass of a step with
        prefill tokens, over up to ``max_num_seqs`` sequences; the LM head runs after the replay, on the rows that
        sample. A step pads its tokens to the next size (padding tokens belong to no sequence and write no slot)
        and its sequences to ``max_num_seqs`` (empty ones). The metadata claims the bucket as the longest query and
        ``max_model_len`` as the longest context: the attention launch it picks is valid for any step that fits."""
        sizes = sorted(set(sizes))
        max_blocks = -(-max_model_len // self.block_size)
        st, self._mixed_host = self._static_inputs(sizes[-1], max_num_seqs, max_blocks, max_num_seqs)
        self._mixed = st
        st["slots"].fill_(-1)
        steps = []
        for t in reversed(sizes):
            metadata = self.backend.build_metadata(AttentionMetadata(
                query_start_loc=st["query_start"], seq_lens=st["seq_lens"], block_table=st["block_table"],
                slot_mapping=st["slots"][:t], max_query_len=t, max_seq_len=max_model_len,
                max_seq_len_is_bound=True))
            steps.append((self._mixed_graphs, t, functools.partial(self._mixed_hidden, t, metadata)))
        return steps

    def _mixed_hidden(self, t: int, metadata: AttentionMetadata) -> torch.Tensor:
        st = self._mixed
        return self.model(st["tokens"][st["source"][:t]], st["positions"][:t], self.kv_caches, metadata)

    def _replay_mixed(self, batch, prev_tokens: torch.Tensor | None) -> torch.Tensor | None:
        total = sum(n for _, _, n, _, _ in batch)
        bucket = next((t for t in sorted(self._mixed_graphs) if t >= total), None)
        st = self._mixed
        if bucket is None or len(batch) > st["seq_lens"].shape[0]:
            return None
        host, view = self._mixed_host[self._mixed_turn]  # last copied two mixed steps ago (see _replay_decode)
        self._mixed_turn ^= 1
        top = view["positions"].shape[0]
        ids, pos, slots, source = (view[k] for k in ("tokens", "positions", "slots", "source"))
        query_start, seq_lens, table = view["query_start"], view["seq_lens"], view["block_table"]
        ids[:top].fill(0)
        pos.fill(0)
        slots.fill(-1)  # padding tokens write nothing
        source[:] = np.arange(top)
        seq_lens.fill(0)  # padding sequences are empty
        query_start.fill(total)
        query_start[0] = 0
        table[:len(batch)].fill(0)
        bs = self.block_size
        lo = num_sampled = 0
        for i, (tokens, start, n, blocks, samples) in enumerate(batch):
            hi = lo + n
            row = np.asarray(tokens[start:start + n], dtype=np.int64)
            ids[lo:hi] = np.maximum(row, 0)
            # A placeholder -(j + 1) takes row j of the previous step's tokens, copied into "prev" below.
            source[lo:hi] = np.where(row < 0, top - 1 - row, source[lo:hi])
            p = np.arange(start, start + n)
            pos[lo:hi] = p
            table[i, :len(blocks)] = blocks
            slots[lo:hi] = table[i, p // bs].astype(np.int64) * bs + p % bs
            seq_lens[i] = start + n
            query_start[i + 1] = hi
            if samples:
                view["sampled"][num_sampled] = hi - 1
                num_sampled += 1
            lo = hi
        self._send(st, host, view, len(batch), prev_tokens)
        hidden = self._mixed_graphs[bucket]()
        # The rows that sample, each its sequence's last token, indexed on the device: no host wait.
        sampled = st["sampled"][:num_sampled]
        return self.model.compute_logits(hidden[sampled])

    def _to_device(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(array).to(device=self.device, dtype=dtype, non_blocking=True)

    @_no_grad
    def execute(self, batch: list[tuple[list[int], int, int, list[int], bool]],
                prev_tokens: torch.Tensor | None = None, *, eager: bool = False) -> torch.Tensor:
        """Run one step. ``batch`` rows: (all token ids, start, num_new_tokens, block ids, samples).
        Returns float32 logits for the rows that sample, in batch order. ``eager``: bypass the captured graphs.

        A negative token id -(j + 1) stands for row j of ``prev_tokens``: a token the previous step sampled on
        the device that the host has not read yet (asynchronous scheduling)."""
        if self._graphs and not eager and all(n == 1 and samples for _, _, n, _, samples in batch):
            logits = self._replay_decode(batch, prev_tokens)
            if logits is not None:
                return logits
        if self._mixed_graphs and not eager:  # also takes a decode batch above the largest decode bucket
            logits = self._replay_mixed(batch, prev_tokens)
            if logits is not None:
                return logits
        bs = self.block_size
        query_lens = np.fromiter((n for _, _, n, _, _ in batch), dtype=np.int64, count=len(batch))
        starts = np.fromiter((s for _, s, _, _, _ in batch), dtype=np.int64, count=len(batch))
        seq_lens = starts + query_lens
        query_start = np.zeros(len(batch) + 1, dtype=np.int64)
        np.cumsum(query_lens, out=query_start[1:])
        total = int(query_start[-1])
        max_blocks = max(len(b) for _, _, _, b, _ in batch)
        sample_rows = [i for i, row in enumerate(batch) if row[4]]
        # A compiling backend pads to its shape buckets: inert tokens (slot -1), empty sequences, null blocks.
        num_tokens, num_seqs, width, num_samples = self.backend.pad_batch(
            num_tokens=total, num_seqs=len(batch), max_blocks=max_blocks, num_samples=len(sample_rows))
        query_start = np.pad(query_start, (0, num_seqs - len(batch)), mode="edge")
        seq_lens = np.pad(seq_lens, (0, num_seqs - len(batch)))

        input_ids = np.zeros(num_tokens, dtype=np.int64)
        positions = np.zeros(num_tokens, dtype=np.int64)
        slots = np.full(num_tokens, -1, dtype=np.int64)
        block_table = np.zeros((num_seqs, width), dtype=np.int32)  # block 0 is the null block
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
        ids = self._to_device(input_ids, torch.int64)
        if prev_tokens is not None:
            _fill_placeholders(ids, prev_tokens)
        hidden = self.model(ids, self._to_device(positions, torch.int64), self.kv_caches, metadata)
        last = np.pad(query_start[1:][sample_rows] - 1, (0, num_samples - len(sample_rows)))
        logits = self.model.compute_logits(hidden[torch.as_tensor(last, device=self.device)])
        self.backend.end_step()
        return logits
