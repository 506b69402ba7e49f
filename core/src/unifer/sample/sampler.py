"""The sampler: one vectorised pass over a batch of logits rows, each with its own SamplingParams.

Pipeline (each stage runs only when some row needs it, so the all-greedy batch is one argmax):
raw logprobs -> logit bias and banned tokens -> penalties -> greedy rows: argmax -> others: temperature,
top-k/top-p/min-p, softmax, draw.
The kernels come from the backend's ops table, so a backend can replace any stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from unifer.pow2 import next_pow2
from unifer.sample.params import SamplingParams


@dataclass
class SamplingState:
    """What the sampler needs to know about one row: its params, its tokens so far (for penalties), its private
    generator (seeded rows draw only from it, so their tokens do not depend on the rest of the batch) and the
    tokens it may not draw this step (EOS and stop ids before ``min_tokens``)."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    generator: torch.Generator | None = None
    banned_token_ids: Sequence[int] = ()


@dataclass
class SamplerOutput:
    token_ids: list[int]
    # per row: {token id: logprob} of the top-N plus the sampled token, or None when the row asked for none
    logprobs: list[dict[int, float] | None]
    # per row: the sampled token's logprob (raw logits), or None when the row asked for no logprobs
    sampled_logprob: list[float | None] | None = None


_PADDING_ROW = SamplingState(SamplingParams(temperature=0.0), [], [])


class PendingSample:
    """A batch's sampled tokens on their way to the host. ``tokens`` stays on the device, where the next step can
    read it as input before the host has; ``result()`` waits for the copies and builds the SamplerOutput."""

    def __init__(self, tokens: torch.Tensor, host: dict[str, torch.Tensor], event, params: list[SamplingParams],
                 num_rows: int) -> None:
        self.tokens = tokens
        self._host = host
        self._event = event
        self._params = params
        self._num_rows = num_rows

    def result(self) -> SamplerOutput:
        if self._event is not None:
            self._event.synchronize()
        host, n = self._host, self._num_rows
        token_list = host["tokens"].tolist()[:n]
        if "sampled" not in host:
            return SamplerOutput(token_list, [None] * n, None)
        sampled = host["sampled"].tolist()
        top_ids = host["top_ids"].tolist() if "top_ids" in host else None
        top_vals = host["top_vals"].tolist() if "top_vals" in host else None
        logprobs: list[dict[int, float] | None] = []
        sampled_logprob: list[float | None] = []
        for row, p in enumerate(self._params[:n]):
            if p.logprobs is None:
                logprobs.append(None)
                sampled_logprob.append(None)
                continue
            n_top = p.logprobs
            entry = dict(zip(top_ids[row][:n_top], top_vals[row][:n_top], strict=True)) if n_top else {}
            entry[token_list[row]] = sampled[row]
            logprobs.append(entry)
            sampled_logprob.append(sampled[row])
        return SamplerOutput(token_list, logprobs, sampled_logprob)


class Sampler:
    def __init__(self, ops) -> None:
        self.ops = ops
        # Pinned host buffers that non-blocking copies land in: two sets, used in turn, since one step's results
        # are read on the host only after the next step's copies are queued.
        self._pinned: dict[tuple[str, int], torch.Tensor] = {}
        self._turn = 0

    def __call__(self, logits: torch.Tensor, batch: list[SamplingState]) -> SamplerOutput:
        return self.launch(logits, batch).result()

    def launch(self, logits: torch.Tensor, batch: list[SamplingState], event=None) -> PendingSample:
        """Queue the sampling of ``batch`` and the copies of its results to the host. With ``event`` (a backend's
        step event) the copies are non-blocking and the event, recorded after them, guards them; without one
        they complete before this returns."""
        if logits.dim() != 2 or logits.shape[0] < len(batch):
            raise ValueError(f"logits must be [B, V] with B >= {len(batch)} rows, got {tuple(logits.shape)}")
        num_rows = len(batch)
        # Rows past the batch are a backend's static-shape padding: sampled greedily, then dropped.
        batch = list(batch) + [_PADDING_ROW] * (logits.shape[0] - num_rows)
        logits = logits.to(torch.float32)
        params = [s.params for s in batch]

        # Logprobs come from the raw logits, before penalties and temperature (vLLM's default).
        raw_logprobs = None
        if any(p.logprobs is not None for p in params):
            raw_logprobs = torch.log_softmax(logits, dim=-1)

        if any(s.params.logit_bias or s.banned_token_ids for s in batch):
            logits = self._apply_logit_bias(logits, batch)
        if any(p.uses_penalties for p in params):
            logits = self._apply_penalties(logits, batch)

        greedy = [p.greedy for p in params]
        if all(greedy):
            tokens = logits.argmax(dim=-1)
        else:
            tokens = self._sample(logits, params, greedy, [s.generator for s in batch])
        # Each result is taken as soon as it exists: without an event that is the blocking read, in the order a
        # lazily tracing backend has compiled its graphs for.
        host: dict[str, torch.Tensor] = {}

        def take(name: str, t: torch.Tensor) -> None:
            host[name] = t.to("cpu") if event is None else self._copy_to_pinned(name, t)

        take("tokens", tokens)
        if raw_logprobs is not None:
            take("sampled", raw_logprobs.gather(-1, tokens.view(-1, 1).to(torch.int64)).squeeze(-1))
            max_n = max(p.logprobs or 0 for p in params)
            if max_n:
                top_vals, top_ids = raw_logprobs.topk(max_n, dim=-1)
                take("top_vals", top_vals)
                take("top_ids", top_ids)
        if event is not None:
            event.record()
            self._turn ^= 1
        return PendingSample(tokens, host, event, params, num_rows)

    def _copy_to_pinned(self, name: str, t: torch.Tensor) -> torch.Tensor:
        key = (name, self._turn)
        buf = self._pinned.get(key)
        if buf is None or buf.numel() < t.numel():
            buf = self._pinned[key] = torch.empty(next_pow2(t.numel(), 256), dtype=t.dtype,
                                                  pin_memory=t.device.type != "cpu")
        out = buf[:t.numel()].view(t.shape)
        out.copy_(t, non_blocking=True)
        return out

    # stages ----------------------------------------------------------------------------------------------------
    def _apply_logit_bias(self, logits: torch.Tensor, batch: list[SamplingState]) -> torch.Tensor:
        """Each row's logit_bias, and -inf on its banned tokens (which the penalties then leave at -inf)."""
        num_rows, vocab = logits.shape
        rows, ids, values = [], [], []
        for row, s in enumerate(batch):
            terms = list((s.params.logit_bias or {}).items()) + [(t, float("-inf")) for t in s.banned_token_ids]
            for token, value in terms:
                rows.append(row)
                ids.append(token)
                values.append(value)
        index = _flat_index(rows, ids, num_rows, vocab, logits.device)
        values_t = torch.tensor(values + [0.0] * (index.numel() - len(values)), dtype=torch.float32,
                                device=logits.device)
        # accumulate: a banned token may carry a bias too, and the padding pairs repeat one scratch slot
        bias = torch.zeros((num_rows + 1) * vocab, dtype=torch.float32, device=logits.device)
        return logits + bias.index_put((index,), values_t, accumulate=True).view(num_rows + 1, vocab)[:num_rows]

    def _apply_penalties(self, logits: torch.Tensor, batch: list[SamplingState]) -> torch.Tensor:
        num_rows, vocab = logits.shape
        device = logits.device
        p_rows, p_ids, o_rows, o_ids = [], [], [], []
        for row, s in enumerate(batch):
            if not s.params.uses_penalties:
                continue
            p_rows.extend([row] * len(s.prompt_token_ids))
            p_ids.extend(s.prompt_token_ids)
            o_rows.extend([row] * len(s.output_token_ids))
            o_ids.extend(s.output_token_ids)

        size = (num_rows + 1) * vocab
        prompt_mask = torch.zeros(size, dtype=torch.bool, device=device)
        p_flat = _flat_index(p_rows, p_ids, num_rows, vocab, device)
        prompt_mask = prompt_mask.index_fill(0, p_flat, True).view(num_rows + 1, vocab)[:num_rows]
        o_flat = _flat_index(o_rows, o_ids, num_rows, vocab, device)
        output_counts = torch.zeros(size, dtype=torch.int32, device=device).scatter_add(
            0, o_flat, torch.ones_like(o_flat, dtype=torch.int32)).view(num_rows + 1, vocab)[:num_rows]

        def vec(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        params = [s.params for s in batch]
        return self.ops.apply_penalties(
            logits, prompt_mask, output_counts,
            presence=vec([p.presence_penalty for p in params]),
            frequency=vec([p.frequency_penalty for p in params]),
            repetition=vec([p.repetition_penalty for p in params]),
        )

    def _sample(self, logits: torch.Tensor, params: list[SamplingParams], greedy: list[bool],
                generators: list[torch.Generator | None]) -> torch.Tensor:
        device = logits.device
        greedy_tokens = logits.argmax(dim=-1) if any(greedy) else None
        # Greedy rows get temperature 1 here; their draw is discarded below.
        temps = torch.tensor([1.0 if g else p.temperature for p, g in zip(params, greedy, strict=True)],
                             dtype=torch.float32, device=device)
        scaled = logits / temps[:, None]
        if any(p.uses_top_k_top_p_min_p and not g for p, g in zip(params, greedy, strict=True)):
            scaled = self.ops.apply_top_k_top_p_min_p(
                scaled,
                top_k=torch.tensor([max(p.top_k, 0) for p in params], dtype=torch.int64, device=device),
                top_p=torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device),
                min_p=torch.tensor([p.min_p for p in params], dtype=torch.float32, device=device),
            )
        probs = torch.softmax(scaled, dim=-1)
        sampled = self.ops.random_sample(probs, [None if g else gen for g, gen in zip(greedy, generators, strict=True)])
        if greedy_tokens is None:
            return sampled
        is_greedy = torch.tensor(greedy, dtype=torch.bool, device=device)
        return torch.where(is_greedy, greedy_tokens, sampled.to(greedy_tokens.dtype))


def _flat_index(rows: list[int], ids: list[int], num_rows: int, vocab: int, device) -> torch.Tensor:
    """(row, token) pairs as indices into a flat [num_rows + 1, vocab] tensor, so that one scatter serves the whole
    batch. The list is padded to a power-of-two length with pairs in the scratch row past the batch: a compiling
    backend then sees a few index shapes, not a new one every step as the outputs grow."""
    pad = next_pow2(len(rows), 16) - len(rows)
    rows_t = torch.tensor(rows + [num_rows] * pad, dtype=torch.int64, device=device)
    return rows_t * vocab + torch.tensor(ids + [0] * pad, dtype=torch.int64, device=device)
