"""A small byte-level BPE tokenizer trained inside the tests: deterministic, fast, and round-trips any text.

Used by the detokenizer tests, the test checkpoints and the embedded default model, so that no test downloads one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["<s>", "</s>", "<unk>", "<pad>"]  # ids 0..3
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_WORDS = (
    "the a an and of to in is it that for on with as was at by be this from or are not have had but what all were "
    "when we there can your which their said if will each about how up out them then she many some so these would "
    "other into has more her two like him see time could no make than first been its who now people my made over "
    "did down only way find use may water long little very after words called just where most know hello world "
    "model token engine cache block attention sample stream batch prompt stop text byte unicode "
    "héllo wörld café naïve résumé façade über straße déjà-vu piñata "
    "日本語 東京 こんにちは 世界 中文 汉字 한국어 안녕하세요 Ελληνικά Привет мир שלום مرحبا "
    "🙂 🚀 🎉 👍🏽 ❤️ ✓ → ≤ ≥ ∑ π ½ € £ ¥ 1 2 3 42 100 2024 3.14 , . ! ? ; : ( ) [ ] { } \" ' - _ / \\ @ # $ % & *"
).split()


def training_lines(num_lines: int = 400, seed: int = 0) -> list[str]:
    """Deterministic pseudo-sentences mixing ASCII with multi-byte characters."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        line = " ".join(words)
        lines.append(line[:1].upper() + line[1:] + rng.choice([".", "!", "?", "", "\n"]))
    return lines


def build_tokenizer(folder: str | Path, vocab_size: int = 512) -> Tokenizer:
    """Train a byte-level BPE tokenizer and write ``tokenizer.json`` and ``tokenizer_config.json`` into folder.

    Special tokens <s>, </s>, <unk>, <pad> get ids 0..3; the post-processor prepends <s> (and tokenizer_config says
    add_bos_token, so both readings agree). Returns the in-memory ``tokenizers.Tokenizer``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_lines(), trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:
            raise RuntimeError(f"special token {t!r} got id {tok.token_to_id(t)}, expected {i}")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
    )
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
    return tok
