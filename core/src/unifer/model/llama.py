"""Llama-family decoder (Llama, Mistral, Qwen2, Qwen3): one class, the differences read from config.json."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unifer.backends.backend import AttentionMetadata
from unifer.model.errors import CheckpointError
from unifer.model.layers import Attention, GatedMLP, Linear, RMSNorm
from unifer.model.rope import cos_sin_cache, rope_parameters
from unifer.ops.table import Ops

_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


@dataclass(frozen=True)
class DecoderSpec:
    """The shape and variant of a Llama-family checkpoint."""

    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    eps: float
    max_positions: int
    tie_embeddings: bool
    qkv_bias: bool
    mlp_bias: bool
    qk_norm: bool
    windows: tuple[int | None, ...]  # sliding window of each layer (None: full attention)
    soft_cap: float | None
    rope: dict

    @classmethod
    def from_hf(cls, cfg: dict, architecture: str) -> DecoderSpec:
        missing = [k for k in _REQUIRED if k not in cfg]
        if missing:
            raise CheckpointError(f"config.json lacks {', '.join(missing)} needed by {architecture}")
        heads = cfg["num_attention_heads"]
        layers = cfg["num_hidden_layers"]
        qwen = architecture.startswith("Qwen")
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden=cfg["hidden_size"],
            layers=layers,
            heads=heads,
            kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            intermediate=cfg["intermediate_size"],
            eps=cfg.get("rms_norm_eps", 1e-6),
            max_positions=cfg.get("max_position_embeddings", 2048),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=architecture == "Qwen2ForCausalLM" or bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            qk_norm=architecture == "Qwen3ForCausalLM",
            windows=_layer_windows(cfg, layers, qwen),
            soft_cap=cfg.get("attn_logit_softcapping"),
            rope=rope_parameters(cfg),
        )


def _layer_windows(cfg: dict, layers: int, qwen: bool) -> tuple[int | None, ...]:
    window = cfg.get("sliding_window")
    if layer_types := cfg.get("layer_types"):
        return tuple(window if t == "sliding_attention" else None for t in layer_types)
    if qwen:  # Qwen2/3 configs without layer_types: sliding only when enabled, from max_window_layers on
        if not cfg.get("use_sliding_window"):
            return (None,) * layers
        first = cfg.get("max_window_layers", layers)
        return tuple(window if i >= first else None for i in range(layers))
    return (window,) * layers


class DecoderLayer(nn.Module):
    def __init__(self, spec: DecoderSpec, index: int, rope_cache: torch.Tensor, ops: Ops, dtype, device) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden, spec.eps, ops, dtype, device)
        self.self_attn = Attention(
            hidden=spec.hidden, num_heads=spec.heads, num_kv_heads=spec.kv_heads, head_dim=spec.head_dim,
            qkv_bias=spec.qkv_bias, qk_norm_eps=spec.eps if spec.qk_norm else None,
            sliding_window=spec.windows[index], soft_cap=spec.soft_cap, cos_sin_cache=rope_cache,
            ops=ops, dtype=dtype, device=device)
        self.post_attention_layernorm = RMSNorm(spec.hidden, spec.eps, ops, dtype, device)
        self.mlp = GatedMLP(spec.hidden, spec.intermediate, spec.mlp_bias, ops, dtype, device)

    def forward(self, positions, hidden, residual, kv_cache, metadata):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, kv_cache, metadata)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


# checkpoint name fragment -> (our parameter name fragment, shard index in the fused weight)
_FUSED = {
    ".q_proj.": (".qkv_proj.", 0), ".k_proj.": (".qkv_proj.", 1), ".v_proj.": (".qkv_proj.", 2),
    ".gate_proj.": (".gate_up_proj.", 0), ".up_proj.": (".gate_up_proj.", 1),
}


class LlamaForCausalLM(nn.Module):
    """``forward(input_ids, positions, kv_caches, metadata)`` over a packed batch; logits only where asked."""

    def __init__(self, hf_config: dict, ops: Ops, dtype: torch.dtype, device: torch.device,
                 architecture: str = "LlamaForCausalLM") -> None:
        super().__init__()
        spec = DecoderSpec.from_hf(hf_config, architecture)
        self.spec = spec
        # rotary tables stay float32: they feed the rotation math, not a matrix product
        rope_cache = cos_sin_cache(spec.head_dim, spec.max_positions, spec.rope).to(device)
        self.embed_tokens = nn.Parameter(torch.empty(spec.vocab_size, spec.hidden, dtype=dtype, device=device),
                                         requires_grad=False)
        self.layers = nn.ModuleList(DecoderLayer(spec, i, rope_cache, ops, dtype, device) for i in range(spec.layers))
        self.norm = RMSNorm(spec.hidden, spec.eps, ops, dtype, device)
        self.lm_head = None if spec.tie_embeddings else Linear(spec.hidden, spec.vocab_size, False, dtype, device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor],
                metadata: AttentionMetadata) -> torch.Tensor:
        hidden = F.embedding(input_ids, self.embed_tokens)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden, residual = layer(positions, hidden, residual, kv_cache, metadata)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 logits; with ``out`` (float32, [tokens, vocab]) written into it, by the same one cast."""
        weight = self.embed_tokens if self.lm_head is None else self.lm_head.weight
        logits = F.linear(hidden, weight)
        return logits.float() if out is None else out.copy_(logits)

    # weights --------------------------------------------------------------------------------------------------
    def _target(self, name: str) -> tuple[str, int | None]:
        name = name.removeprefix("model.")
        if name == "embed_tokens.weight":
            return "embed_tokens", None
        for old, (new, shard) in _FUSED.items():
            if old in name:
                return name.replace(old, new), shard
        return name, None

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors in; raise CheckpointError naming any missing, unknown or mis-shaped tensor."""
        expected = dict(self.named_parameters())
        filled: dict[str, set[int | None]] = {}
        for ckpt_name, tensor in weights:
            if "rotary_emb.inv_freq" in ckpt_name:
                continue
            if ckpt_name == "lm_head.weight" and self.lm_head is None:
                continue  # tied: some checkpoints store the copy anyway
            name, shard = self._target(ckpt_name)
            param = expected.get(name)
            if param is None:
                raise CheckpointError(f"unexpected tensor {ckpt_name!r} in checkpoint (no such parameter)")
            dest = param.data if shard is None else self._module_of(name).shard(param.data, shard)
            if tuple(dest.shape) != tuple(tensor.shape):
                raise CheckpointError(f"tensor {ckpt_name!r} has shape {tuple(tensor.shape)}, "
                                      f"expected {tuple(dest.shape)}")
            dest.copy_(tensor)
            filled.setdefault(name, set()).add(shard)
        missing = [self._checkpoint_name(name, shard) for name in expected
                   for shard in self._shards(name) if shard not in filled.get(name, set())]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise CheckpointError(f"checkpoint lacks tensor(s) {', '.join(missing[:5])}{more}")

    def _module_of(self, param_name: str) -> Linear:
        return self.get_submodule(param_name.rsplit(".", 1)[0])

    def _shards(self, param_name: str) -> list[int | None]:
        module = self._module_of(param_name) if "." in param_name else None
        if isinstance(module, Linear) and len(module.shard_sizes) > 1:
            return list(range(len(module.shard_sizes)))
        return [None]

    @staticmethod
    def _checkpoint_name(param_name: str, shard: int | None) -> str:
        if param_name == "embed_tokens":
            return "model.embed_tokens.weight"
        for old, (new, index) in _FUSED.items():
            if new in param_name and index == shard:
                param_name = param_name.replace(new, old)
                break
        return param_name if param_name.startswith("lm_head") else "model." + param_name
