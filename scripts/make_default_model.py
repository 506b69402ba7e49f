"""Writes models/tiny-llama: the embedded default model (random weights, a byte-level BPE tokenizer).

    .venv/bin/python scripts/make_default_model.py
Deterministic; needs transformers (a test dependency), never at run time.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

root = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(root / "tests"))
from checkpoints import make_checkpoint  # noqa: E402

OUT = root / "models" / "tiny-llama"


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    make_checkpoint(OUT, "LlamaForCausalLM", seed=1234, num_layers=4, std=0.05, max_positions=2048,
                    shard_size="3MB", hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=512, rope_scaling=None, save_dtype=torch.bfloat16)
    print(f"wrote {OUT}: {sum(f.stat().st_size for f in OUT.iterdir()) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
