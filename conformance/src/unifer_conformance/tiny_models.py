"""Tiny random-weight checkpoints written by transformers ``save_pretrained`` into a temporary folder.

The suite makes its own models (no download, no dependency on any repository's test folder). Weights are drawn
with a large init std (0.1) so logits are spread and greedy argmaxes are far from ties: two correct engines then
agree token for token, and a wrong kernel changes tokens within a few steps.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

VOCAB = 512
_CACHE: dict[tuple, Path] = {}
_ROOT: list[Path] = []


def _root() -> Path:
    if not _ROOT:
        _ROOT.append(Path(tempfile.mkdtemp(prefix="unifer-conformance-")))
        atexit.register(shutil.rmtree, _ROOT[0], ignore_errors=True)
    return _ROOT[0]


def spec(arch: str, head_dim: int, max_gqa: int) -> dict:
    """Llama: 4 heads over 2 KV heads (GQA 2); Qwen2: 4 heads over 1 KV head (GQA 4), with q/k/v biases."""
    kv = 2 if arch == "llama" else (1 if max_gqa >= 4 else 2)
    return dict(heads=4, kv_heads=kv, head_dim=head_dim, hidden=4 * head_dim, layers=2)


def checkpoint(arch: str, head_dim: int, max_gqa: int = 8, seed: int = 0) -> Path:
    key = (arch, head_dim, max_gqa, seed)
    if key in _CACHE:
        return _CACHE[key]
    import torch
    import transformers

    s = spec(arch, head_dim, max_gqa)
    common = dict(vocab_size=VOCAB, hidden_size=s["hidden"], num_attention_heads=s["heads"],
                  num_key_value_heads=s["kv_heads"], num_hidden_layers=s["layers"], intermediate_size=2 * s["hidden"],
                  max_position_embeddings=1024, initializer_range=0.1, rms_norm_eps=1e-6, bos_token_id=0,
                  eos_token_id=1, tie_word_embeddings=False)
    if arch == "llama":
        config = transformers.LlamaConfig(head_dim=head_dim, **common)
        model_class = transformers.LlamaForCausalLM
    elif arch == "qwen2":
        config = transformers.Qwen2Config(**common)
        model_class = transformers.Qwen2ForCausalLM
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = model_class(config).eval()
    finally:
        torch.random.set_rng_state(state)  # leave the caller's RNG as it was
    folder = _root() / f"{arch}-h{head_dim}-g{max_gqa}-s{seed}"
    transformers.utils.logging.disable_progress_bar()  # keep the suite's output to its own report lines
    model.save_pretrained(folder)
    _CACHE[key] = folder
    return folder
