"""Builds one paged-attention step the way core's runner does, on a hostile cache, plus its float64 oracle.

Hostile: block 0 is the null block and stays NaN; block tables are shuffled and non-contiguous, padded with the
null block and wider than needed; the highest block id of the pool is used; every cache slot no sequence owns
is NaN, so a kernel reading past a sequence's end (or a window's start) produces NaN.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from unifer_conformance.buffers import Guarded, randn


@dataclass
class Step:
    seqs: list[tuple[int, int]]  # per sequence (cached context tokens, new query tokens)
    q_heads: int
    kv_heads: int
    head_size: int
    block_size: int
    dtype: torch.dtype
    share_prefix: bool = False  # sequence 1 shares sequence 0's leading full blocks (a prefix-cache hit)
    sliding_window: int | None = None
    soft_cap: float | None = None
    q_scale: float = 1.0  # > 1 drives scores into the soft-cap's non-linear range


def _metadata(seqs, tables, slots, device, pad_cols: int):
    from unifer.backends import AttentionMetadata

    qsl = [0]
    for _, q in seqs:
        qsl.append(qsl[-1] + q)
    seq_lens = [c + q for c, q in seqs]
    width = max(len(t) for t in tables) + pad_cols
    table = torch.zeros((len(seqs), width), dtype=torch.int32)  # padding points at the NaN null block
    for i, t in enumerate(tables):
        table[i, : len(t)] = torch.tensor(t, dtype=torch.int32)
    return AttentionMetadata(
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_table=table.to(device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        max_query_len=max(q for _, q in seqs), max_seq_len=max(seq_lens),
        query_start_loc_host=qsl, seq_lens_host=seq_lens)


def run_step(backend, step: Step, gen: torch.Generator, perf: bool = False):
    """Write the cached context and the step's new K/V with the backend's write_kv, run its paged_attention.

    Returns (output, float64 reference output, problems: list[str], perf dict or None).
    """
    from unifer.ops import reference

    dev, bs, dt = backend.device(), step.block_size, step.dtype
    kvh, hd = step.kv_heads, step.head_size
    seq_lens = [c + q for c, q in step.seqs]
    need = [-(-n // bs) for n in seq_lens]
    shared = 0
    if step.share_prefix:
        shared = min(step.seqs[0][0], step.seqs[1][0]) // bs
    num_blocks = 2 * sum(need) + 9  # a pool twice the need: ids spread over the whole range
    ids = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    ids.remove(num_blocks - 1)
    ids.insert(0, num_blocks - 1)  # the top block id is in use: an index overflow shows
    tables = []
    for i, n in enumerate(need):
        if i == 1 and shared:
            tables.append(tables[0][:shared] + ids[: n - shared])
            ids = ids[n - shared:]
        else:
            tables.append(ids[:n])
            ids = ids[n:]

    # Logical K/V per sequence, rounded to the dtype (the cache stores them so); shared blocks hold equal tokens.
    keys = [randn((n, kvh, hd), dt, "cpu", gen) for n in seq_lens]
    vals = [randn((n, kvh, hd), dt, "cpu", gen) for n in seq_lens]
    if shared:
        keys[1][: shared * bs] = keys[0][: shared * bs]
        vals[1][: shared * bs] = vals[0][: shared * bs]
    q = randn((sum(q for _, q in step.seqs), step.q_heads, hd), dt, "cpu", gen, scale=step.q_scale)

    def slots_of(i, lo, hi):
        return [tables[i][p // bs] * bs + p % bs for p in range(lo, hi)]

    cache = Guarded(None, shape=backend.kv_cache_shape(num_blocks, bs, kvh, hd), dtype=dt, device=dev)
    # 1. cached context, as earlier steps would have written it (shared blocks only once).
    ctx_slots, ctx_k, ctx_v = [], [], []
    for i, (c, _) in enumerate(step.seqs):
        lo = shared * bs if i == 1 else 0
        if c > lo:
            ctx_slots += slots_of(i, lo, c)
            ctx_k.append(keys[i][lo:c])
            ctx_v.append(vals[i][lo:c])
    if ctx_slots:
        backend.ops.write_kv(torch.cat(ctx_k).to(dev), torch.cat(ctx_v).to(dev), cache.tensor,
                             torch.tensor(ctx_slots, dtype=torch.int64, device=dev))
    # 2. this step: new K/V written, then attention over the paged context.
    step_slots = sum((slots_of(i, c, c + n) for i, (c, n) in enumerate(step.seqs)), [])
    new_k = torch.cat([keys[i][c:] for i, (c, _) in enumerate(step.seqs)])
    new_v = torch.cat([vals[i][c:] for i, (c, _) in enumerate(step.seqs)])
    md = _metadata(step.seqs, tables, step_slots, dev, pad_cols=2)
    md = backend.build_metadata(md)
    scale = hd ** -0.5
    kwargs = dict(scale=scale, sliding_window=step.sliding_window, soft_cap=step.soft_cap)
    backend.ops.write_kv(new_k.to(dev), new_v.to(dev), cache.tensor, md.slot_mapping)
    q_dev = q.to(dev)
    backend.synchronize()
    t0 = time.perf_counter()
    out = backend.ops.paged_attention(q_dev, cache.tensor, md, **kwargs)
    backend.synchronize()
    elapsed = time.perf_counter() - t0
    perf_info = None
    if perf:  # a second, warm call is what gets reported
        t0 = time.perf_counter()
        backend.ops.paged_attention(q_dev, cache.tensor, md, **kwargs)
        backend.synchronize()
        elapsed = time.perf_counter() - t0
        perf_info = _perf(step, seq_lens, elapsed)

    problems = []
    if not cache.guards_intact():
        problems.append("a NaN guard region around the KV cache was overwritten")
    written = int((~torch.isnan(cache.tensor.float())).sum())
    tokens_stored = sum(seq_lens) - shared * bs
    if written != 2 * tokens_stored * kvh * hd:
        problems.append(f"the KV cache holds {written} written elements after the step, expected "
                        f"{2 * tokens_stored * kvh * hd}: a write landed outside the given slots or attention wrote "
                        "the cache")

    # float64 oracle: the reference ops over a default-layout float64 cache with the same tables and slots.
    ref_cache = torch.full((2, num_blocks, bs, kvh, hd), float("nan"), dtype=torch.float64)
    all_slots = sum((slots_of(i, 0, n) for i, n in enumerate(seq_lens)), [])
    reference.write_kv(torch.cat(keys).double(), torch.cat(vals).double(), ref_cache,
                       torch.tensor(all_slots, dtype=torch.int64))
    md_cpu = _metadata(step.seqs, tables, step_slots, "cpu", pad_cols=2)
    want = reference.paged_attention(q.double(), ref_cache, md_cpu, **kwargs)
    return out, want, problems, perf_info


def _perf(step: Step, seq_lens: list[int], seconds: float) -> dict[str, float]:
    """Achieved rates, for the report only: bytes of K/V that must be read (each sequence's visible context),
    plus q and out; FLOPs of QK^T and PV over the visible (causal, windowed) pairs."""
    item = torch.empty((), dtype=step.dtype).element_size()
    kv_bytes = q_bytes = flops = 0
    for (c, n), total in zip(step.seqs, seq_lens, strict=True):
        w = step.sliding_window or total
        kv_bytes += min(total, w + n) * step.kv_heads * step.head_size * 2 * item
        q_bytes += 2 * n * step.q_heads * step.head_size * item
        for j in range(n):
            pos = c + j
            flops += 4 * min(pos + 1, w) * step.q_heads * step.head_size
    return {"seconds": seconds, "bytes": float(kv_bytes + q_bytes), "flops": float(flops),
            "GB_per_s": (kv_bytes + q_bytes) / seconds / 1e9, "GFLOP_per_s": flops / seconds / 1e9}
