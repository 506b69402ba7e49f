"""A Hugging Face tokenizer loaded from tokenizer.json with the `tokenizers` library alone.

Why not transformers: it is a heavy import and a moving target; the runtime needs only encode/decode plus the few
facts in tokenizer_config.json (BOS/EOS, add_bos_token, chat template), read here directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _HFTokenizer


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _token_content(value: Any) -> str | None:
    """tokenizer_config stores special tokens as a string or as an AddedToken dict {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _as_id_list(value: Any) -> list[int]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


class Tokenizer:
    def __init__(self, tokenizer: _HFTokenizer, config: dict[str, Any] | None = None,
                 generation_config: dict[str, Any] | None = None, model_config: dict[str, Any] | None = None,
                 name: str = "") -> None:
        self._tok = tokenizer
        self.name = name
        config = config or {}
        generation_config = generation_config or {}
        model_config = model_config or {}

        self.bos_token = _token_content(config.get("bos_token"))
        self.eos_token = _token_content(config.get("eos_token"))
        self.pad_token = _token_content(config.get("pad_token"))
        self.bos_token_id = self._id_of(self.bos_token)
        if self.bos_token_id is None:
            ids = _as_id_list(generation_config.get("bos_token_id")) or _as_id_list(model_config.get("bos_token_id"))
            self.bos_token_id = ids[0] if ids else None

        eos_ids: list[int] = []
        config_eos = self._id_of(self.eos_token)
        if config_eos is not None:
            eos_ids.append(config_eos)
        # generation_config may list several EOS ids (e.g. chat models' end-of-turn); all of them end generation.
        eos_ids += _as_id_list(generation_config.get("eos_token_id")) or _as_id_list(model_config.get("eos_token_id"))
        self.eos_token_id: int | None = eos_ids[0] if eos_ids else None
        self.eos_token_ids: set[int] = set(eos_ids)

        self.add_bos_token: bool | None = config.get("add_bos_token") if isinstance(
            config.get("add_bos_token"), bool) else None
        self.add_eos_token: bool = config.get("add_eos_token") is True
        template = config.get("chat_template")
        if isinstance(template, list):  # the named-templates form: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        self.chat_template: str | None = template if isinstance(template, str) else None

        self.all_special_ids: list[int] = sorted(
            tid for tid, tok in self._tok.get_added_tokens_decoder().items() if tok.special)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Tokenizer:
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {folder}: unifer needs a fast (tokenizers) tokenizer; "
                                    "convert it with transformers' AutoTokenizer(...).save_pretrained")
        try:
            tok = _HFTokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises plain Exception subclasses
            raise ValueError(f"cannot load {path}: {e}") from e
        config = _read_json(folder / "tokenizer_config.json")
        template_file = folder / "chat_template.jinja"
        if "chat_template" not in config and template_file.is_file():
            config["chat_template"] = template_file.read_text(encoding="utf-8")
        return cls(tok, config, _read_json(folder / "generation_config.json"), _read_json(folder / "config.json"),
                   name=str(folder))

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    # encode / decode ---------------------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        if not add_special_tokens:
            return ids
        bos, eos = self.bos_token_id, self.eos_token_id
        # The post-processor may already add BOS; tokenizer_config's add_bos_token has the last word either way.
        if self.add_bos_token is not None and bos is not None:
            if self.add_bos_token and (not ids or ids[0] != bos):
                ids = [bos] + ids
            elif not self.add_bos_token and ids and ids[0] == bos and not text.startswith(self.bos_token or "\0"):
                ids = ids[1:]
        if self.add_eos_token and eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: int | list[int]) -> str | None | list[str | None]:
        if isinstance(ids, int):
            return self._tok.id_to_token(ids)
        return [self._tok.id_to_token(i) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | None | list[int | None]:
        if isinstance(tokens, str):
            return self._tok.token_to_id(tokens)
        return [self._tok.token_to_id(t) for t in tokens]

    @property
    def vocab_size(self) -> int:
        """Size including added tokens (the ids the tokenizer can produce)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, eos={sorted(self.eos_token_ids)})"
