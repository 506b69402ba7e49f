"""Tokenizer loading and incremental detokenization (multi-byte characters, stop strings, hold-back)."""

from __future__ import annotations

import json
import random

import pytest
from tokenizer_fixture import build_tokenizer
from unifer.engine.detokenizer import IncrementalDetokenizer
from unifer.model.tokenizer import Tokenizer

ALPHABET = (list("abcdefg hij  XYZ.,!?\n") + list("éöüßñ日本語中文한국🙂🚀👍🏽€≤")
            + ["héllo", " wörld", " 日本語", " 🙂"])


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    build_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def tok(tok_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(tok_dir)


def random_text(rng: random.Random, n: int = 30) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(n))


def run(tok, prompt: str, text: str, **kw) -> tuple[IncrementalDetokenizer, list[str], list[int], object]:
    """Feed text's tokens one by one; stop at the first stop. Returns (detok, deltas, fed ids, last result)."""
    d = IncrementalDetokenizer(tok, tok.encode(prompt), **kw)
    deltas, fed, result = [], [], None
    for t in tok.encode(text, add_special_tokens=False):
        fed.append(t)
        result = d.append(t)
        deltas.append(result.delta)
        assert d.text == "".join(deltas)
        if result.stopped:
            break
    return d, deltas, fed, result


# tokenizer ---------------------------------------------------------------------------------------------------------
def test_tokenizer_basics(tok, tok_dir):
    assert (tok.bos_token_id, tok.eos_token_id, tok.eos_token_ids) == (0, 1, {1})
    assert tok.all_special_ids == [0, 1, 2, 3]
    assert tok.vocab_size == 512 and tok.chat_template
    ids = tok.encode("héllo wörld 日本語 🙂")
    assert ids[0] == 0 and ids[1] != 0  # BOS once, though both the post-processor and the config add it
    assert tok.decode(ids) == "héllo wörld 日本語 🙂"
    assert tok.decode(ids, skip_special_tokens=False) == "<s>héllo wörld 日本語 🙂"
    assert tok.encode("abc", add_special_tokens=False)[0] != 0
    assert tok.convert_ids_to_tokens([0, 1]) == ["<s>", "</s>"]


def test_tokenizer_config_variants(tok_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((tok_dir / "tokenizer.json").read_bytes())
    # no tokenizer_config: fall back to generation_config / config for EOS; no BOS handling on top of tokenizer.json
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [1, 3], "bos_token_id": 0}))
    t = Tokenizer.from_pretrained(tmp_path)
    assert t.eos_token_ids == {1, 3} and t.eos_token_id == 1 and t.bos_token_id == 0 and t.chat_template is None
    assert t.encode("hi")[0] == 0  # the post-processor's BOS
    # dict-form special tokens; add_bos_token false removes the post-processor's BOS
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<s>"}, "eos_token": {"content": "<pad>"}, "add_bos_token": False}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    t = Tokenizer.from_pretrained(tmp_path)
    assert t.eos_token_id == 3 and t.eos_token_ids == {1, 3}
    assert t.encode("hi")[0] != 0


def test_missing_tokenizer_names_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        Tokenizer.from_pretrained(tmp_path)


# incremental decoding ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(40))
def test_deltas_concatenate_to_decode(tok, seed):
    rng = random.Random(seed)
    prompt, text = random_text(rng, 10), random_text(rng, 40)
    d, deltas, fed, _ = run(tok, prompt, text)
    d.flush()
    assert "".join(deltas) == tok.decode(fed) == text
    assert d.text == text
    assert not any("\ufffd" in x for x in deltas)


def test_split_multibyte_characters_are_held_back(tok):
    ids = tok.encode("🙂𝔘", add_special_tokens=False)
    assert len(ids) > 2  # the emoji and the rare character span several byte tokens
    d = IncrementalDetokenizer(tok, tok.encode("x"))
    deltas = [d.append(t).delta for t in ids]
    assert "".join(deltas) == "🙂𝔘" and all("\ufffd" not in x for x in deltas)


def test_special_tokens_add_no_text(tok):
    d = IncrementalDetokenizer(tok, tok.encode("hi"))
    for t in tok.encode(" there", add_special_tokens=False) + [tok.eos_token_id]:
        d.append(t)
    d.flush()
    assert d.text == " there"
    d = IncrementalDetokenizer(tok, tok.encode("hi"), skip_special_tokens=False)
    for t in tok.encode(" there", add_special_tokens=False) + [tok.eos_token_id]:
        d.append(t)
    assert d.text == " there</s>"


def test_flush_releases_incomplete_tail(tok):
    ids = tok.encode("a日", add_special_tokens=False)
    d = IncrementalDetokenizer(tok, [0])
    for t in ids[:-1]:
        d.append(t)
    assert d.text == "a"
    d.flush()
    assert d.text == tok.decode(ids[:-1])  # the incomplete character becomes U+FFFD only at the very end


# stop strings ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("include", [False, True])
def test_stop_strings_split_across_tokens(tok, seed, include):
    rng = random.Random(1000 + seed)
    before, after = random_text(rng, 15), random_text(rng, 10)
    stop = rng.choice(["日本語", "wörld", "STOP!", "🙂🚀", "é\né"])
    if stop in before:
        before = before.replace(stop[0], "a")
    d, deltas, fed, result = run(tok, "p", before + stop + after, stop=[stop, "never-seen"],
                                 include_stop_str_in_output=include)
    assert result.stopped and result.stop_string == stop
    assert d.text == "".join(deltas) == (before + stop if include else before)
    assert d.flush() == "" and d.text == (before + stop if include else before)
    assert d.append(5).stopped  # no text after a stop
    assert not any("\ufffd" in x for x in deltas)


def test_partial_stop_is_held_then_released(tok):
    d = IncrementalDetokenizer(tok, [0], stop=["abcd"])
    steps = []
    for piece in ["x", "a", "b", "c", "e", "a", "b"]:
        (t,) = tok.encode(piece, add_special_tokens=False)
        steps.append(d.append(t).delta)
    assert steps == ["x", "", "", "", "abce", "", ""]
    assert d.text == "xabce"
    assert d.flush() == "ab" and d.text == "xabceab"


def test_stop_never_streamed_partially(tok):
    stop = "wörld!"
    text = "héllo wörl héllo wörld! more"
    d, deltas, _, result = run(tok, "p", text, stop=[stop])
    assert result.stopped and d.text == "héllo wörl héllo "
    streamed = ""
    for delta in deltas:
        streamed += delta
        assert "wörld" not in streamed


def test_earliest_stop_wins(tok):
    d, _, _, result = run(tok, "p", "one two three four", stop=["four", "two", "three"])
    assert result.stop_string == "two" and d.text == "one "
