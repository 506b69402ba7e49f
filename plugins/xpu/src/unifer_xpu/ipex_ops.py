"""The contract's ops on intel-extension-for-pytorch's ``ipex.llm.modules`` kernels.

Device-agnostic: IPEX dispatches each call on the tensors' device (its XPU build to SYCL kernels, its CPU build to
C++ kernels), which is what lets CI check this adapter on CPU tensors. The one device-dependent fact is the KV
cache layout that IPEX's paged kernels read and write:
  cpu: [num_blocks, kv_heads, block_size, head_dim]   (measured: reshape_and_cache_flash on IPEX 2.8 CPU)
  xpu: [num_blocks, block_size, kv_heads, head_dim]   (IPEX's "flash" layout on XPU; not verified here)
Both sit in one tensor [2, ...] (keys, values), as the contract wants one KV tensor per layer.
"""

from __future__ import annotations

import functools

import torch
from unifer.backends import AttentionMetadata

OP_NAMES: tuple[str, ...] = ("rms_norm", "rotary_embedding", "write_kv", "paged_attention")


@functools.cache
def _modules():
    import intel_extension_for_pytorch as ipex

    return ipex.llm.modules


def heads_major(device_type: str) -> bool:
    return device_type == "cpu"


def kv_cache_shape(device_type: str, num_blocks: int, block_size: int, num_kv_heads: int,
                   head_dim: int) -> tuple[int, ...]:
    if heads_major(device_type):
        return (2, num_blocks, num_kv_heads, block_size, head_dim)
    return (2, num_blocks, block_size, num_kv_heads, head_dim)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    if residual is not None:
        x = x + residual
        residual = x
    out = _modules().RMSNorm.apply_function(x.contiguous(), weight, eps)
    return out if residual is None else (out, residual)


def rotary_embedding(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                     cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # IPEX rotates in place; the contract forbids writing inputs, hence the clones. It takes per-token sin/cos of
    # the full rotary width (both halves equal for rotate-half), so gather and duplicate the contract's table.
    cos, sin = cos_sin_cache[positions.long()].chunk(2, dim=-1)
    q, k = query.clone(), key.clone()
    head_dim = query.shape[-1]
    q, k = _modules().RotaryEmbedding.apply_function(q, k, torch.cat((sin, sin), -1), torch.cat((cos, cos), -1),
                                                     head_dim, True)
    return q, k


def write_kv(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    # IPEX's CPU kernel does not skip slot -1 (it writes out of bounds), so padding tokens are dropped here.
    valid = slot_mapping >= 0
    if not bool(valid.all()):
        key, value, slot_mapping = key[valid], value[valid], slot_mapping[valid]
    if slot_mapping.numel() == 0:
        return
    _modules().PagedAttention.reshape_and_cache_flash(
        key.to(kv_cache.dtype).contiguous(), value.to(kv_cache.dtype).contiguous(), kv_cache[0], kv_cache[1],
        slot_mapping)


def paged_attention(query: torch.Tensor, kv_cache: torch.Tensor, metadata: AttentionMetadata, *, scale: float,
                    sliding_window: int | None = None, soft_cap: float | None = None) -> torch.Tensor:
    if sliding_window == 1:
        return _attend_to_self(query, kv_cache, metadata.slot_mapping)
    out = torch.empty_like(query)
    cu_q = metadata.query_start_loc.to(torch.int32)
    cu_k = torch.nn.functional.pad(metadata.seq_lens.cumsum(0, dtype=torch.int32), (1, 0))
    # The contract's window W lets a query see W positions including its own; IPEX counts the ones to its left.
    left = sliding_window - 1 if sliding_window else -1
    _modules().PagedAttention.flash_attn_varlen_func(
        out, query.contiguous(), kv_cache[0], kv_cache[1], cu_q, cu_k, metadata.max_query_len,
        metadata.max_seq_len, scale, True, metadata.block_table.to(torch.int32), None,
        window_size_left=left, window_size_right=-1, softcap=soft_cap or -1.0)
    return out


def _attend_to_self(query: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> torch.Tensor:
    """A window of 1 lets each query see only its own key, so the output is its own value. IPEX 2.8's CPU kernel
    gets window_size_left=0 wrong (measured), and this case needs no kernel."""
    slots = slot_mapping.long()
    block_size = kv_cache.shape[3] if heads_major(kv_cache.device.type) else kv_cache.shape[2]
    blocks, offsets = slots // block_size, slots % block_size
    values = kv_cache[1][blocks, :, offsets] if heads_major(kv_cache.device.type) else kv_cache[1][blocks, offsets]
    group = query.shape[1] // values.shape[1]
    return values.repeat_interleave(group, dim=1).to(query.dtype)
