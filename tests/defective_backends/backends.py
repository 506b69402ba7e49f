"""One subclass of the CPU backend per defect; each replaces exactly one op with a subtly wrong version."""

from __future__ import annotations

import torch
from unifer.ops import reference
from unifer_cpu import CPUBackend
from unifer_cpu import attention as cpu_attention


class _Defective(CPUBackend):
    priority = -1  # never chosen automatically
    defect: dict = {}

    def native_ops(self):
        return {**super().native_ops(), **self.defect}


# --- the defects -------------------------------------------------------------------------------------------------
def softmax_scale_off(query, kv_cache, metadata, *, scale, **kw):
    return cpu_attention.paged_attention(query, kv_cache, metadata, scale=scale * 1.01, **kw)


def rope_wrong_beyond_512(positions, query, key, cos_sin_cache):
    # A kernel whose table index is off by one past position 512 (e.g. a wrong second-page offset).
    return reference.rotary_embedding(torch.where(positions > 512, positions - 1, positions), query, key,
                                      cos_sin_cache)


def kv_one_slot_off_at_block_boundary(key, value, kv_cache, slot_mapping):
    # Assumes a sequence's blocks are contiguous: the first token of a new block goes to previous slot + 1.
    bs = kv_cache.shape[2]
    prev, cur = slot_mapping[:-1], slot_mapping[1:]
    crosses = (prev >= 0) & (cur >= 0) & (cur % bs == 0) & (prev % bs == bs - 1)
    slots = slot_mapping.clone()
    slots[1:] = torch.where(crosses, prev + 1, cur)
    reference.write_kv(key, value, kv_cache, slots)


def gqa_wrong_head_mapping(query, kv_cache, metadata, **kw):
    # Query head h reads KV head h % kv_heads instead of h // group: permute heads around the correct kernel.
    heads, kv_heads = query.shape[1], kv_cache.shape[3]
    group = heads // kv_heads
    j = torch.tensor([(h % kv_heads) * group + h // kv_heads for h in range(heads)])
    permuted = torch.empty_like(query)
    permuted[:, j] = query
    return cpu_attention.paged_attention(permuted, kv_cache, metadata, **kw)[:, j]


def top_p_keeps_one_extra(logits, *, top_k, top_p, min_p):
    # The nucleus keeps one token more than the shortest prefix reaching top_p.
    vocab = logits.shape[-1]
    nucleus = reference.apply_top_k_top_p_min_p(logits, top_k=top_k, top_p=top_p, min_p=torch.zeros_like(min_p))
    kept = torch.isfinite(nucleus).sum(-1)
    limit = torch.where(top_k > 0, top_k, vocab)
    widened = torch.where((top_p < 1.0) & (kept < limit), kept + 1, torch.where(top_p < 1.0, kept, top_k))
    wide = reference.apply_top_k_top_p_min_p(logits, top_k=widened, top_p=torch.ones_like(top_p),
                                             min_p=torch.zeros_like(min_p))
    return reference.apply_top_k_top_p_min_p(wide, top_k=torch.zeros_like(top_k), top_p=torch.ones_like(top_p),
                                             min_p=min_p)


def sliding_window_ignored(query, kv_cache, metadata, *, sliding_window=None, **kw):
    return cpu_attention.paged_attention(query, kv_cache, metadata, **kw)


DEFECTS = {
    "softmax-scale": {"paged_attention": softmax_scale_off},
    "rope-512": {"rotary_embedding": rope_wrong_beyond_512},
    "kv-block-boundary": {"write_kv": kv_one_slot_off_at_block_boundary},
    "gqa-mapping": {"paged_attention": gqa_wrong_head_mapping},
    "top-p-extra": {"apply_top_k_top_p_min_p": top_p_keeps_one_extra},
    "sliding-window": {"paged_attention": sliding_window_ignored},
}


def make_backends() -> list[CPUBackend]:
    """The clean wrapper (no defect) and one backend per defect, named ``defect-<defect>``."""
    out = [type("CleanCPU", (_Defective,), {"name": "clean-cpu", "defect": {}})()]
    for name, ops in DEFECTS.items():
        cls = type(f"Defect_{name.replace('-', '_')}", (_Defective,), {"name": f"defect-{name}", "defect": ops})
        out.append(cls())
    return out
