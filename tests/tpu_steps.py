"""A ragged attention step for the TPU backend's tests: a NaN-poisoned paged cache in both the reference layout
and the TPU layout (same K/V, written through each layout's write_kv), shuffled block tables with block 0 left
as the null block, unpadded metadata, and queries."""

from __future__ import annotations

import torch
from unifer.backends import AttentionMetadata
from unifer.ops import reference
from unifer_tpu import attention


def ragged_step(seqs, *, kv_heads=2, group=2, head_dim=16, block_size=4, dtype=torch.float64, seed=0):
    """``seqs``: (cached context, new tokens) per sequence. Returns (query, float64 reference cache, TPU cache in
    ``dtype``, metadata)."""
    g = torch.Generator().manual_seed(seed)
    lens = [c + q for c, q in seqs]
    need = [-(-n // block_size) for n in lens]
    num_blocks = 2 * sum(need) + 3
    ids = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    tables = []
    for n in need:
        tables.append(ids[:n])
        ids = ids[n:]
    ref_cache = torch.full((2, num_blocks, block_size, kv_heads, head_dim), float("nan"), dtype=torch.float64)
    tpu_cache = torch.full(attention.kv_cache_shape(num_blocks, block_size, kv_heads, head_dim), float("nan"),
                           dtype=dtype)
    for i, n in enumerate(lens):
        slots = torch.tensor([tables[i][p // block_size] * block_size + p % block_size for p in range(n)])
        k = torch.randn(n, kv_heads, head_dim, generator=g, dtype=torch.float64).to(dtype)
        v = torch.randn(n, kv_heads, head_dim, generator=g, dtype=torch.float64).to(dtype)
        reference.write_kv(k.double(), v.double(), ref_cache, slots)
        attention.write_kv(k, v, tpu_cache, slots)
    qsl = [0]
    for _, q in seqs:
        qsl.append(qsl[-1] + q)
    table = torch.zeros(len(seqs), max(need), dtype=torch.int32)
    for i, t in enumerate(tables):
        table[i, : len(t)] = torch.tensor(t)
    step_slots = [tables[i][p // block_size] * block_size + p % block_size
                  for i, (c, q) in enumerate(seqs) for p in range(c, c + q)]
    md = AttentionMetadata(torch.tensor(qsl, dtype=torch.int32), torch.tensor(lens, dtype=torch.int32), table,
                           torch.tensor(step_slots), max(q for _, q in seqs), max(lens), qsl, lens)
    query = torch.randn(qsl[-1], kv_heads * group, head_dim, generator=g, dtype=torch.float64).to(dtype)
    return query, ref_cache, tpu_cache, md
