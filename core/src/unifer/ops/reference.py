"""Every kernel of the contract in plain PyTorch: the oracle for the conformance suite and the fallback for ops a
backend leaves out. Clarity over speed. Each op accumulates in float32, or float64 for float64 inputs, so that
the same code computes the float64 ground truth.
"""

from __future__ import annotations

import torch

from unifer.backends.backend import AttentionMetadata


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm over the last dim. With ``residual``: returns (norm(x + residual), x + residual)."""
    if residual is not None:
        x = x + residual
        residual = x
    h = x.to(_acc(x))
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * h.to(x.dtype)
    return out if residual is None else (out, residual)


def rotary_embedding(
    positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """NeoX-style (rotate-half) rotary embedding of q [T, H, D] and k [T, KH, D].

    ``cos_sin_cache`` is [max_positions, D]: cos in the first D/2 columns, sin in the last D/2.
    """
    cos, sin = cos_sin_cache[positions.long()].chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.to(cos.dtype).chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

    return rotate(query), rotate(key)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(x[..., :d]) * x[..., d:] for x [..., 2d]."""
    gate, up = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def write_kv(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store k, v [T, KH, D] into kv_cache [2, blocks, block_size, KH, D] at flat slots; slot -1 is skipped."""
    block_size = kv_cache.shape[2]
    valid = slot_mapping >= 0
    slots = slot_mapping[valid].long()
    blocks, offsets = slots // block_size, slots % block_size
    kv_cache[0, blocks, offsets] = key[valid].to(kv_cache.dtype)
    kv_cache[1, blocks, offsets] = value[valid].to(kv_cache.dtype)


def rotary_write_kv(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    cos_sin_cache: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> torch.Tensor:
    """``rotary_embedding`` of query and key, then ``write_kv`` of the rotated key and the value; returns the rotated
    query. One op so that a backend can do both in one pass over the new tokens."""
    query, key = rotary_embedding(positions, query, key, cos_sin_cache)
    write_kv(key, value, kv_cache, slot_mapping)
    return query


def paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata: AttentionMetadata,
    *,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """Causal attention of packed queries [T, H, D] over each sequence's paged context (already written).

    Query token j of sequence i sits at position seq_len - query_len + j and sees keys at positions p with
    p <= its own and, with a sliding window W, p > its own - W.
    """
    query_start, seq_lens = metadata.host_lists()
    num_kv_heads, head_dim = kv_cache.shape[3], kv_cache.shape[4]
    block_size = kv_cache.shape[2]
    group = query.shape[1] // num_kv_heads
    acc = _acc(query)
    out = torch.empty_like(query)
    for i, seq_len in enumerate(seq_lens):
        q0, q1 = query_start[i], query_start[i + 1]
        if q1 == q0:
            continue
        num_blocks = -(-seq_len // block_size)
        blocks = metadata.block_table[i, :num_blocks].long()
        k = kv_cache[0, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].to(acc)
        v = kv_cache[1, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].to(acc)
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        q = query[q0:q1].to(acc)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        if soft_cap:
            scores = soft_cap * torch.tanh(scores / soft_cap)
        q_pos = torch.arange(seq_len - (q1 - q0), seq_len, device=query.device)[:, None]
        k_pos = torch.arange(seq_len, device=query.device)[None, :]
        visible = k_pos <= q_pos
        if sliding_window:
            visible &= k_pos > q_pos - sliding_window
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[q0:q1] = torch.einsum("hqk,khd->qhd", probs, v).to(query.dtype)
    return out


def apply_penalties(
    logits: torch.Tensor,
    prompt_mask: torch.Tensor,
    output_counts: torch.Tensor,
    *,
    presence: torch.Tensor,
    frequency: torch.Tensor,
    repetition: torch.Tensor,
) -> torch.Tensor:
    """OpenAI presence/frequency penalties (on generated tokens) and the repetition penalty (prompt + output).

    logits [B, V]; prompt_mask bool [B, V]; output_counts [B, V]; presence, frequency, repetition [B].
    """
    seen = prompt_mask | (output_counts > 0)
    rep = repetition[:, None].to(logits.dtype)
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalised, logits)
    counts = output_counts.to(logits.dtype)
    logits = logits - frequency[:, None].to(logits.dtype) * counts
    return logits - presence[:, None].to(logits.dtype) * (counts > 0).to(logits.dtype)


def apply_top_k_top_p_min_p(
    logits: torch.Tensor, *, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    """Mask (to -inf) the logits outside top-k, then outside the nucleus top-p, then below min_p x max prob.

    top_k [B] int (<= 0: off); top_p [B] float (1.0: off); min_p [B] float (0.0: off). The nucleus is the
    shortest prefix of tokens by descending probability whose total reaches top_p (the first token always kept).
    """
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab)[:, None]
    drop = rank >= k
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(sorted_logits.to(_acc(logits)), dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of strictly better-ranked tokens
    drop |= (before >= top_p[:, None].to(probs.dtype)) & (rank > 0)
    drop |= probs < min_p[:, None].to(probs.dtype) * probs[:, :1]
    mask = torch.zeros_like(drop).scatter(-1, order, drop)
    return logits.masked_fill(mask, float("-inf"))


def random_sample(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """Draw one token per row of probs [B, V]; a row with a generator draws only from it (reproducible anywhere
    in the batch). Exponential race: argmax(p / E) with E ~ Exp(1) selects token i with probability p_i."""
    noise = torch.empty_like(probs, dtype=torch.float32).exponential_()
    for row, gen in enumerate(generators):
        if gen is not None:
            noise[row].exponential_(generator=gen)
    return (probs.to(torch.float32) / noise).argmax(dim=-1)
