"""Building blocks of decoder-only transformers. Every kernel call goes through the backend's ops table."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unifer.backends.backend import AttentionMetadata
from unifer.ops.table import Ops


def _param(*shape: int, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)


class Linear(nn.Module):
    """y = x Wᵀ (+ b). ``shards`` names the checkpoint tensors stacked (in order) into this weight, so that
    q/k/v and gate/up load into one fused matrix product."""

    def __init__(self, in_features: int, out_features: int | list[int], bias: bool, dtype, device) -> None:
        super().__init__()
        self.shard_sizes = out_features if isinstance(out_features, list) else [out_features]
        total = sum(self.shard_sizes)
        self.weight = _param(total, in_features, dtype=dtype, device=device)
        self.bias = _param(total, dtype=dtype, device=device) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def shard(self, tensor: torch.Tensor, index: int) -> torch.Tensor:
        """The slice of ``tensor`` (weight or bias) that checkpoint shard ``index`` fills."""
        start = sum(self.shard_sizes[:index])
        return tensor[start:start + self.shard_sizes[index]]


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, ops: Ops, dtype, device) -> None:
        super().__init__()
        self.weight = _param(size, dtype=dtype, device=device)
        self.eps = eps
        self.ops = ops

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return self.ops.rms_norm(x, self.weight, self.eps, residual=residual)


class Attention(nn.Module):
    def __init__(self, *, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int, qkv_bias: bool,
                 qk_norm_eps: float | None, sliding_window: int | None, soft_cap: float | None,
                 cos_sin_cache: torch.Tensor, ops: Ops, dtype, device) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_size, self.kv_size = num_heads * head_dim, num_kv_heads * head_dim
        self.qkv_proj = Linear(hidden, [self.q_size, self.kv_size, self.kv_size], qkv_bias, dtype, device)
        self.o_proj = Linear(self.q_size, hidden, False, dtype, device)
        self.q_norm = self.k_norm = None
        if qk_norm_eps is not None:  # Qwen3: RMSNorm over each head before rotary
            self.q_norm = RMSNorm(head_dim, qk_norm_eps, ops, dtype, device)
            self.k_norm = RMSNorm(head_dim, qk_norm_eps, ops, dtype, device)
        self.sliding_window, self.soft_cap = sliding_window, soft_cap
        self.scale = head_dim ** -0.5
        self.cos_sin_cache = cos_sin_cache
        self.ops = ops

    def forward(self, positions: torch.Tensor, x: torch.Tensor, kv_cache: torch.Tensor,
                metadata: AttentionMetadata) -> torch.Tensor:
        tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = self.ops.rotary_write_kv(positions, q, k, v, self.cos_sin_cache, kv_cache, metadata.slot_mapping)
        out = self.ops.paged_attention(q, kv_cache, metadata, scale=self.scale,
                                       sliding_window=self.sliding_window, soft_cap=self.soft_cap)
        return self.o_proj(out.reshape(tokens, self.q_size))


class GatedMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, bias: bool, ops: Ops, dtype, device) -> None:
        super().__init__()
        self.gate_up_proj = Linear(hidden, [intermediate, intermediate], bias, dtype, device)
        self.down_proj = Linear(intermediate, hidden, bias, dtype, device)
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.ops.silu_and_mul(self.gate_up_proj(x)))
