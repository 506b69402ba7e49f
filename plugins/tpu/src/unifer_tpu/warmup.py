"""Compile every shape bucket before the first request, through the engine's own runner and sampler, so the
graphs compiled are exactly the ones real steps will look up.

Dummy steps write only the null block (block 0), which attention reads only under a mask. The sampler is run
in the mixes that give distinct graphs: all greedy, greedy with top-N logprobs for each N in LOGPROBS, and
random rows (temperature; with top-p; seeded) filling the bucket or sharing it with greedy rows. Other
logprobs counts and penalties compile on first use (penalties build index tensors whose size is data).
"""

from __future__ import annotations

import os
import time

from unifer.sample.params import SamplingParams
from unifer.sample.sampler import SamplingState

LOGPROBS = (0, 1, 5)


def enabled(on_tpu: bool) -> bool:
    """On by default on a TPU; off on XLA's CPU client, where compiling every bucket of the default limits
    costs minutes (UNIFER_TPU_WARMUP=1 turns it on, =0 off)."""
    flag = os.environ.get("UNIFER_TPU_WARMUP", "").strip()
    return flag == "1" if flag else on_tpu


def sampler_mixes(rows: int) -> list[list[SamplingParams]]:
    greedy = SamplingParams(temperature=0.0)
    mixes = [[greedy] * rows] + [[SamplingParams(temperature=0.0, logprobs=n)] * rows for n in LOGPROBS]
    for extra in ({}, {"top_p": 0.9}):
        for seed in (None, 1):
            params = SamplingParams(temperature=0.8, seed=seed, **extra)
            mixes += [[params] * rows, [params] * (rows - 1) + [greedy]]
    return [m for m in mixes if m]


def compile_buckets(backend, runner, sampler) -> float:
    """Run one dummy step per (tokens, seqs) bucket and the sampler mixes per seqs bucket; returns seconds."""
    started = time.perf_counter()
    # Flush what is still queued from loading (weights, zeroed KV caches) as a graph of its own: traced into the
    # first dummy step, it would make that step's graph differ from the one a real step of the same shape
    # traces, and the first real step in that bucket would compile again.
    backend.synchronize()
    buckets, block_size = backend.buckets, runner.block_size
    max_len = buckets.block_table_width * block_size
    sampled_rows: set[int] = set()
    for tokens, seqs in buckets.shapes():
        total = min(tokens, seqs * max_len)
        if buckets.pad(total, seqs, 1)[0] != tokens:
            continue  # no real step reaches this bucket: sequences cannot be that long
        count = min(seqs, total)
        lengths = [total // count + (i < total % count) for i in range(count)]
        rows = [([0] * n, 0, n, [0] * -(-n // block_size), True) for n in lengths]
        logits = runner.execute(rows)
        if seqs in sampled_rows or count < seqs:  # the sampler's graphs depend on the seqs bucket only
            continue
        sampled_rows.add(seqs)
        for mix in sampler_mixes(count):
            states = [SamplingState(p, [], [], backend.make_generator(p.seed) if p.seed is not None else None)
                      for p in mix]
            backend.end_step()  # as after a real step's forward: XLA's RNG seed restarts from device data
            sampler(logits, states)
    backend.synchronize()
    return time.perf_counter() - started
