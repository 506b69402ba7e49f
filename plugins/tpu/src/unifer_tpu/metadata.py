"""Pads a step's AttentionMetadata to bucket sizes.

Padding must be inert: padded tokens get slot -1 (write_kv drops them), padded sequences are empty (their
query_start_loc entries repeat the total and their seq_lens are 0), and padded block-table columns point at
block 0, the engine's null block, which attention only ever reads under a mask.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from unifer.backends import AttentionMetadata


def pad_metadata(md: AttentionMetadata, tokens: int, seqs: int, width: int) -> AttentionMetadata:
    """Metadata padded to ``tokens`` slots, ``seqs`` sequences and ``width`` block-table columns; ``md`` itself
    when it already has those sizes (the runner pads on the host, so the engine's steps arrive padded)."""
    t, s = md.slot_mapping.shape[0], md.seq_lens.shape[0]
    w = md.block_table.shape[1]
    if (t, s, w) == (tokens, seqs, width):
        return md
    if t > tokens or s > seqs or w > width:
        raise ValueError(f"cannot pad a step of {t} tokens, {s} sequences, {w} block columns down to "
                         f"{tokens}, {seqs}, {width}")
    qsl = md.query_start_loc
    qsl = torch.cat([qsl, qsl[-1:].expand(seqs - s)])
    qsl_host, lens_host = md.query_start_loc_host, md.seq_lens_host
    if qsl_host is not None:
        qsl_host = list(qsl_host) + [qsl_host[-1]] * (seqs - s)
    if lens_host is not None:
        lens_host = list(lens_host) + [0] * (seqs - s)
    return dataclasses.replace(
        md,
        query_start_loc=qsl,
        seq_lens=F.pad(md.seq_lens, (0, seqs - s)),
        block_table=F.pad(md.block_table, (0, width - w, 0, seqs - s)),
        slot_mapping=F.pad(md.slot_mapping, (0, tokens - t), value=-1),
        query_start_loc_host=qsl_host,
        seq_lens_host=lens_host,
    )
