"""Tiny random-weight Hugging Face checkpoints, written by transformers ``save_pretrained`` inside the tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizer_fixture import build_tokenizer

VOCAB = 512

# Each architecture with a different head size, GQA ratio, embedding tying and extras (bias, q/k norm, window).
ARCHS: dict[str, dict] = {
    "LlamaForCausalLM": dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512,
                             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                             tie_word_embeddings=False),
    "MistralForCausalLM": dict(hidden_size=320, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512,
                               sliding_window=24, tie_word_embeddings=False),
    "Qwen2ForCausalLM": dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=1, intermediate_size=512,
                             tie_word_embeddings=True),
    "Qwen3ForCausalLM": dict(hidden_size=256, head_dim=80, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=512, tie_word_embeddings=False),
}


def make_checkpoint(folder: Path, architecture: str = "LlamaForCausalLM", *, seed: int = 0,
                    num_layers: int = 2, std: float = 0.1, max_positions: int = 512,
                    shard_size: str = "300KB", save_dtype: torch.dtype | None = None, **overrides) -> Path:
    """Write config.json, >= 2 safetensors shards with an index, tokenizer.json and tokenizer_config.json."""
    import transformers

    kwargs = dict(ARCHS[architecture], vocab_size=VOCAB, num_hidden_layers=num_layers,
                  max_position_embeddings=max_positions, initializer_range=std, rms_norm_eps=1e-6,
                  bos_token_id=0, eos_token_id=1, pad_token_id=3)
    kwargs.update(overrides)
    config_class = getattr(transformers, architecture.replace("ForCausalLM", "Config"))
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config_class(**kwargs)).eval()
    if save_dtype is not None:
        model = model.to(save_dtype)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, max_shard_size=shard_size)
    build_tokenizer(folder, vocab_size=VOCAB)
    return folder
