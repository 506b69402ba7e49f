"""Unified ragged paged attention: prefills, prefill chunks and decodes of one step in a single launch.

Grid: (query blocks x KV heads, KV segments), KV head fastest. A program owns one KV head and BLOCK_M query rows
made of BLOCK_Q query tokens x the GROUP query heads sharing that KV head (GQA packing), so each KV tile is read
once per KV head and query block. Query blocks are assigned to sequences by a binary search over
``query_start_loc`` (block ``b`` of sequence ``i`` has global index ``query_start_loc[i] // BLOCK_Q + i + b``), so
the grid depends only on the number of tokens and sequences: fixed for graph capture. The KV loop walks tiles of
TILE positions gathered through the block table (a tile may span several pages), with an online softmax in base 2.
Where the config row turns on ``unmasked_full_tiles``, a prefill launch walks the tiles that every row of its block
sees whole in a first loop without the causal and bounds masks, then the rest masked.

Split-KV: for few tokens over long contexts, NUM_SEGMENTS > 1 programs share one query block's KV range and write
partial (max, sum, acc) rows; ``_reduce_segments_kernel`` merges them.

Cache layout: kv_cache [2, num_blocks, block_size, kv_heads, head_dim] (the Backend default), any strides except
a unit last stride; ``paged_attention_head_major`` reads a [2, num_blocks, kv_heads, block_size, head_dim] one.
Head sizes that are not powers of two are padded to the next one with masks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from unifer.backends.backend import AttentionMetadata
from unifer.kernels.triton.configs import AttentionConfig, attention_launch, choose_num_segments
from unifer.kernels.triton.dependent_launch import launch_options, wait_for_predecessor
from unifer.kernels.triton.util import acc_dtype, current_configs, dot_precision


@triton.jit
def _tanh(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1): saturates cleanly to +-1; portable (no vendor libdevice).
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _find_seq_idx(query_start_ptr, target, num_seqs, BLOCK_Q: tl.constexpr, BLOCKS: tl.constexpr = True):
    """The last sequence i whose first query block (query_start[i] // BLOCK_Q + i) is <= target; with ``BLOCKS``
    off, whose first token (query_start[i]) is."""
    left = 0
    right = num_seqs
    while left < right:
        mid = (left + right) // 2
        start = tl.load(query_start_ptr + mid)
        if BLOCKS:
            start = start // BLOCK_Q + mid
        if start <= target:
            left = mid + 1
        else:
            right = mid
    return left - 1


@triton.jit
def _kv_tiles(seq_len, query_len, q_block, sliding_window, BLOCK_Q: tl.constexpr, TILE: tl.constexpr,
              USE_WINDOW: tl.constexpr):
    """KV tiles [begin, end) that some row of query block ``q_block`` may see, and the end position kv_end."""
    context_len = seq_len - query_len
    last_row_pos = context_len + tl.minimum(q_block * BLOCK_Q + BLOCK_Q, query_len) - 1
    kv_end = tl.minimum(last_row_pos + 1, seq_len)
    kv_begin = 0
    if USE_WINDOW:
        kv_begin = tl.maximum(context_len + q_block * BLOCK_Q - sliding_window + 1, 0)
    return kv_begin // TILE, tl.cdiv(kv_end, TILE), kv_end


@triton.jit
def _segment_tiles(tile_begin, tile_end, segment, NUM_SEGMENTS: tl.constexpr):
    """The tiles of one split-KV segment: equal runs, so the last segments may get none."""
    per_segment = tl.cdiv(tile_end - tile_begin, NUM_SEGMENTS)
    begin = tile_begin + segment * per_segment
    return begin, tl.minimum(begin + per_segment, tile_end)


@triton.jit
def _live_segments(tile_begin, tile_end, NUM_SEGMENTS: tl.constexpr):
    """How many segments, from the first, ``_segment_tiles`` gives tiles (1 where there are none at all)."""
    per_segment = tl.maximum(tl.cdiv(tile_end - tile_begin, NUM_SEGMENTS), 1)
    return tl.maximum(tl.cdiv(tile_end - tile_begin, per_segment), 1)


@triton.jit
def _attend_tile(q, m_i, l_i, acc, t, kv_ptr, bt_row, kv_head_off, kv_stride0, kv_stride1, kv_stride2, q_abs, kv_end,
                 scale, soft_cap, sliding_window, offs_t, offs_d, dim_mask, BLOCK_SIZE: tl.constexpr,
                 TILE: tl.constexpr, USE_SOFT_CAP: tl.constexpr, USE_WINDOW: tl.constexpr, DOT_PREC: tl.constexpr,
                 ACC: tl.constexpr, MASKED: tl.constexpr):
    """One KV tile of the online softmax: gather K and V through the block table, fold them into (m, l, acc)."""
    k_pos = t * TILE + offs_t
    if MASKED:
        k_valid = k_pos < kv_end
        page = tl.load(bt_row + k_pos // BLOCK_SIZE, mask=k_valid, other=0).to(tl.int64)
        k_mask = dim_mask[:, None] & k_valid[None, :]
        v_mask = k_valid[:, None] & dim_mask[None, :]
    else:
        page = tl.load(bt_row + k_pos // BLOCK_SIZE).to(tl.int64)
        k_mask = dim_mask[:, None]
        v_mask = dim_mask[None, :]
    slot = page * kv_stride1 + (k_pos % BLOCK_SIZE).to(tl.int64) * kv_stride2 + kv_head_off
    k = tl.load(kv_ptr + slot[None, :] + offs_d[:, None], mask=k_mask, other=0.0)
    v = tl.load(kv_ptr + kv_stride0 + slot[:, None] + offs_d[None, :], mask=v_mask, other=0.0)
    s = tl.dot(q, k, input_precision=DOT_PREC).to(ACC) * scale
    if USE_SOFT_CAP:
        s = soft_cap * _tanh(s / soft_cap)
    if MASKED:
        visible = (k_pos[None, :] <= q_abs[:, None]) & k_valid[None, :]
        if USE_WINDOW:
            visible = visible & (q_abs[:, None] - k_pos[None, :] < sliding_window)
        s = tl.where(visible, s * 1.4426950408889634, float("-inf"))
    else:
        s = s * 1.4426950408889634
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC).to(ACC)
    return m_new, l_i, acc


# The sequence count and the block table's width change from step to step; specialising on them (a value of 1, a
# multiple of 16) would compile new variants while serving.
@triton.jit(do_not_specialize=["num_seqs", "bt_stride0"])
def _unified_attention_kernel(
    out_ptr,  # [T, H, D]
    segm_out_ptr,  # [T, H, NUM_SEGMENTS, HEAD_PAD] (split-KV only)
    segm_max_ptr,  # [T, H, NUM_SEGMENTS]
    segm_sum_ptr,  # [T, H, NUM_SEGMENTS]
    q_ptr,  # [T, H, D]
    kv_ptr,  # [2, num_blocks, block_size, KH, D]
    block_table_ptr,  # [B, max_blocks] int32
    seq_lens_ptr,  # [B] int32
    query_start_ptr,  # [B + 1] int32
    scale,
    soft_cap,
    sliding_window,
    num_seqs,
    num_heads,
    q_stride0,
    q_stride1,
    o_stride0,
    o_stride1,
    kv_stride0,
    kv_stride1,
    kv_stride2,
    kv_stride3,
    bt_stride0,
    HEAD_DIM: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TILE: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    USE_SOFT_CAP: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    NUM_SEGMENTS: tl.constexpr,
    DOT_PREC: tl.constexpr,
    ACC: tl.constexpr,
    MASK_ALL: tl.constexpr,
    SKIP_EMPTY: tl.constexpr,
    PDL: tl.constexpr,
):
    # KV head fastest: the programs of one query block's heads run side by side and read the same pages.
    num_kv_heads = num_heads // GROUP
    q_block_global = tl.program_id(0) // num_kv_heads
    kv_head = tl.program_id(0) % num_kv_heads
    segment = tl.program_id(1)

    # The step's metadata is read before waiting on the predecessor kernel: it was written before the kernel ahead
    # of that one (``unified_attention``'s contract), so the search overlaps the predecessor's tail.
    seq_idx = _find_seq_idx(query_start_ptr, q_block_global, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_ptr + seq_idx)
    q_stop = tl.load(query_start_ptr + seq_idx + 1)
    seq_len = tl.load(seq_lens_ptr + seq_idx)
    if SKIP_EMPTY and NUM_SEGMENTS > 1:
        # A segment past its query block's last tile stores nothing (the merge counts the segments that got tiles),
        # so it may end before the wait; segment 0 always waits, which keeps the chain of waits transitive. The
        # range is derived again below, after the wait, so that builds without this exit keep their instructions.
        first, last, _ = _kv_tiles(seq_len, q_stop - q_start, q_block_global - (q_start // BLOCK_Q + seq_idx),
                                   sliding_window, BLOCK_Q, TILE, USE_WINDOW)
        first, last = _segment_tiles(first, last, segment, NUM_SEGMENTS)
        if segment > 0 and first >= last:
            return
    wait_for_predecessor(PDL)
    q_block = q_block_global - (q_start // BLOCK_Q + seq_idx)
    query_len = q_stop - q_start
    if q_block * BLOCK_Q >= query_len:
        return

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_PAD)
    offs_t = tl.arange(0, TILE)
    query_pos = q_block * BLOCK_Q + offs_m // GROUP  # index among this sequence's new tokens
    head = kv_head * GROUP + offs_m % GROUP
    dim_mask = offs_d < HEAD_DIM
    row_mask = (query_pos < query_len) & (offs_m < BLOCK_Q * GROUP)
    tok = (q_start + query_pos).to(tl.int64)

    q_offs = tok[:, None] * q_stride0 + head[:, None] * q_stride1 + offs_d[None, :]
    q = tl.load(q_ptr + q_offs, mask=row_mask[:, None] & dim_mask[None, :], other=0.0)

    context_len = seq_len - query_len
    q_abs = context_len + query_pos  # absolute position of each row's token
    tile_begin, tile_end, kv_end = _kv_tiles(seq_len, query_len, q_block, sliding_window, BLOCK_Q, TILE, USE_WINDOW)
    if NUM_SEGMENTS > 1:
        tile_begin, tile_end = _segment_tiles(tile_begin, tile_end, segment, NUM_SEGMENTS)

    m_i = tl.full([BLOCK_M], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_M], ACC)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], ACC)
    bt_row = block_table_ptr + seq_idx.to(tl.int64) * bt_stride0
    kv_head_off = kv_head.to(tl.int64) * kv_stride3
    # Tiles that end before the block's first query position are seen whole by every row (a window may cut them,
    # so not with one): they skip the causal and bounds masks, which only the last tiles of the range need.
    full_end = tile_begin
    if not USE_WINDOW and not MASK_ALL:
        full_end = tl.minimum(tl.maximum((context_len + q_block * BLOCK_Q + 1) // TILE, tile_begin), tile_end)
    for t in range(tile_begin, full_end):
        m_i, l_i, acc = _attend_tile(q, m_i, l_i, acc, t, kv_ptr, bt_row, kv_head_off, kv_stride0, kv_stride1,
                                     kv_stride2, q_abs, kv_end, scale, soft_cap, sliding_window, offs_t, offs_d,
                                     dim_mask, BLOCK_SIZE, TILE, USE_SOFT_CAP, USE_WINDOW, DOT_PREC, ACC, False)
    for t in range(full_end, tile_end):
        m_i, l_i, acc = _attend_tile(q, m_i, l_i, acc, t, kv_ptr, bt_row, kv_head_off, kv_stride0, kv_stride1,
                                     kv_stride2, q_abs, kv_end, scale, soft_cap, sliding_window, offs_t, offs_d,
                                     dim_mask, BLOCK_SIZE, TILE, USE_SOFT_CAP, USE_WINDOW, DOT_PREC, ACC, True)

    if NUM_SEGMENTS == 1:
        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        o = acc / l_safe[:, None]
        o_offs = tok[:, None] * o_stride0 + head[:, None] * o_stride1 + offs_d[None, :]
        tl.store(out_ptr + o_offs, o.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & dim_mask[None, :])
    else:
        seg = (tok * num_heads + head) * NUM_SEGMENTS + segment
        tl.store(segm_out_ptr + seg[:, None] * HEAD_PAD + offs_d[None, :], acc, mask=row_mask[:, None])
        tl.store(segm_max_ptr + seg, m_i, mask=row_mask)
        tl.store(segm_sum_ptr + seg, l_i, mask=row_mask)


@triton.jit(do_not_specialize=["num_seqs"])
def _reduce_segments_kernel(
    out_ptr,
    segm_out_ptr,
    segm_max_ptr,
    segm_sum_ptr,
    seq_lens_ptr,
    query_start_ptr,
    sliding_window,
    num_seqs,
    num_heads,
    o_stride0,
    o_stride1,
    HEAD_DIM: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    NUM_SEGMENTS: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    TILE: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    SKIP_EMPTY: tl.constexpr,
    PDL: tl.constexpr,
):
    tok = tl.program_id(0)
    head = tl.program_id(1)
    num_tokens = tl.load(query_start_ptr + num_seqs)  # metadata: read before the wait, as in the kernel above
    live = NUM_SEGMENTS
    if SKIP_EMPTY:  # read only the segments the attention kernel wrote: those its token's query block gave tiles
        seq_idx = _find_seq_idx(query_start_ptr, tok, num_seqs, BLOCK_Q, False)
        q_start = tl.load(query_start_ptr + seq_idx)
        query_len = tl.load(query_start_ptr + seq_idx + 1) - q_start
        seq_len = tl.load(seq_lens_ptr + seq_idx)
        tile_begin, tile_end, _ = _kv_tiles(seq_len, query_len, (tok - q_start) // BLOCK_Q, sliding_window, BLOCK_Q,
                                            TILE, USE_WINDOW)
        live = _live_segments(tile_begin, tile_end, NUM_SEGMENTS)
    wait_for_predecessor(PDL)
    if tok >= num_tokens:
        return  # padding token past the last sequence
    offs_s = tl.arange(0, NUM_SEGMENTS)
    offs_d = tl.arange(0, HEAD_PAD)
    seg_mask = offs_s < live
    base = (tok.to(tl.int64) * num_heads + head) * NUM_SEGMENTS
    m = tl.load(segm_max_ptr + base + offs_s, mask=seg_mask, other=float("-inf"))
    s = tl.load(segm_sum_ptr + base + offs_s, mask=seg_mask, other=0.0)
    m_all = tl.max(m, axis=0)
    w = tl.where(m > float("-inf"), tl.exp2(m - m_all), 0.0)
    denom = tl.sum(s * w, axis=0)
    acc = tl.load(segm_out_ptr + (base + offs_s)[:, None] * HEAD_PAD + offs_d[None, :], mask=seg_mask[:, None],
                  other=0.0)
    o = tl.sum(acc * w[:, None], axis=0) / denom
    o_offs = tok.to(tl.int64) * o_stride0 + head * o_stride1 + offs_d
    tl.store(out_ptr + o_offs, o.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)


def _check_inputs(query: torch.Tensor, kv_cache: torch.Tensor) -> None:
    if query.dim() != 3 or kv_cache.dim() != 5 or kv_cache.shape[0] != 2:
        raise ValueError(
            f"expected query [T, H, D] and kv_cache [2, blocks, block_size, KH, D]; got {tuple(query.shape)} "
            f"and {tuple(kv_cache.shape)}"
        )
    if query.shape[2] != kv_cache.shape[4] or query.shape[1] % kv_cache.shape[3]:
        raise ValueError(f"query {tuple(query.shape)} does not match kv_cache {tuple(kv_cache.shape)}")
    if query.dtype != kv_cache.dtype:
        raise ValueError(f"query dtype {query.dtype} differs from kv_cache dtype {kv_cache.dtype}")
    if kv_cache.stride(4) != 1:
        raise ValueError("kv_cache needs a unit stride in its last (head_dim) dimension")


def unified_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata: AttentionMetadata,
    *,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    num_segments: int | None = None,
    config: AttentionConfig | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``paged_attention`` of the reference, plus knobs: ``num_segments`` (None: heuristic; 1: no split-KV;
    a power of two: forced split), ``config`` (None: the table for the current device), ``out``.

    With dependent launch on, the kernels read ``metadata``'s query_start_loc and seq_lens before waiting on the
    kernel launched just before them, so that kernel must not be the one that writes them (dependent_launch.py)."""
    _check_inputs(query, kv_cache)
    if query.stride(2) != 1:
        query = query.contiguous()
    num_tokens, num_heads, head_dim = query.shape
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    group = num_heads // num_kv_heads
    num_seqs = metadata.seq_lens.shape[0]
    cfg = config or current_configs(query.device).attention
    if out is None:
        out = torch.empty_like(query)
    if num_tokens == 0 or num_seqs == 0:
        return out

    launch = attention_launch(cfg, head_dim=head_dim, group=group, decode=metadata.max_query_len <= 1)
    head_pad, block_q = launch["HEAD_PAD"], launch["BLOCK_Q"]
    if num_segments is None:
        num_segments = choose_num_segments(num_tokens, metadata.max_seq_len, cfg, num_seqs=num_seqs,
                                           num_kv_heads=num_kv_heads, tile=launch["TILE"])
    if num_segments < 1 or num_segments & (num_segments - 1):
        raise ValueError(f"num_segments must be a power of two, got {num_segments}")

    # Only where the segment count follows a bound, not this step's contexts, can most segments be empty; a count
    # fitted to the context pays the exit test and the merge's extra metadata for nothing (1-2% on an H100).
    # Unsplit, it changes nothing but would compile one more variant at capture (the graphs of buckets too large
    # to split, or of a max_model_len below split_min_seq_len), besides the one warm_up compiles for eager steps.
    skip_empty = bool(cfg.skip_empty_segments) and metadata.max_seq_len_is_bound and num_segments > 1
    acc = acc_dtype(query.dtype)
    pdl = launch_options(query.device)
    if num_segments > 1:
        segm_out = torch.empty(num_tokens, num_heads, num_segments, head_pad, dtype=acc, device=query.device)
        segm_max = torch.empty(num_tokens, num_heads, num_segments, dtype=acc, device=query.device)
        segm_sum = torch.empty_like(segm_max)
    else:
        segm_out = segm_max = segm_sum = out  # unused

    grid = ((num_tokens // block_q + num_seqs) * num_kv_heads, num_segments)
    _unified_attention_kernel[grid](
        out,
        segm_out,
        segm_max,
        segm_sum,
        query,
        kv_cache,
        metadata.block_table,
        metadata.seq_lens,
        metadata.query_start_loc,
        float(scale),
        float(soft_cap or 0.0),
        int(sliding_window or 0),
        num_seqs,
        num_heads,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        kv_cache.stride(0),
        kv_cache.stride(1),
        kv_cache.stride(2),
        kv_cache.stride(3),
        metadata.block_table.stride(0),
        HEAD_DIM=head_dim,
        HEAD_PAD=head_pad,
        BLOCK_SIZE=block_size,
        TILE=launch["TILE"],
        GROUP=group,
        BLOCK_M=launch["BLOCK_M"],
        BLOCK_Q=block_q,
        USE_SOFT_CAP=bool(soft_cap),
        USE_WINDOW=bool(sliding_window),
        NUM_SEGMENTS=num_segments,
        DOT_PREC=dot_precision(query.dtype),
        ACC=tl.float64 if acc == torch.float64 else tl.float32,
        MASK_ALL=launch["MASK_ALL"],
        SKIP_EMPTY=skip_empty,
        **pdl,
        num_warps=launch["num_warps"],
        num_stages=launch["num_stages"],
    )
    if num_segments > 1:
        _reduce_segments_kernel[(num_tokens, num_heads)](
            out,
            segm_out,
            segm_max,
            segm_sum,
            metadata.seq_lens,
            metadata.query_start_loc,
            int(sliding_window or 0),
            num_seqs,
            num_heads,
            out.stride(0),
            out.stride(1),
            HEAD_DIM=head_dim,
            HEAD_PAD=head_pad,
            NUM_SEGMENTS=num_segments,
            BLOCK_Q=block_q,
            TILE=launch["TILE"],
            USE_WINDOW=bool(sliding_window),
            SKIP_EMPTY=skip_empty,
            **pdl,
            num_warps=cfg.reduce_num_warps,
        )
    return out


def paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata: AttentionMetadata,
    *,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """Same signature and semantics as ``unifer.ops.reference.paged_attention``."""
    return unified_attention(query, kv_cache, metadata, scale=scale, sliding_window=sliding_window, soft_cap=soft_cap)


def paged_attention_head_major(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata: AttentionMetadata,
    *,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """``paged_attention`` over a head-major cache, [2, blocks, KH, block_size, D]."""
    return unified_attention(query, kv_cache.transpose(2, 3), metadata, scale=scale, sliding_window=sliding_window,
                             soft_cap=soft_cap)
