"""``LLM.chat`` (vLLM's offline chat API) against transformers' ``apply_chat_template`` on the same checkpoint, and
``--chat-template`` / ``chat_template=`` in place of the checkpoint's template."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from server_fixture import LiveServer
from unifer import LLM, SamplingParams
from unifer.model.tokenizer import Tokenizer

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
CONVERSATIONS = [
    [{"role": "user", "content": "hello there"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cache"},
     {"role": "assistant", "content": "hi"}, {"role": "user", "content": [{"type": "text", "text": "more"}]}],
]


@pytest.fixture(scope="module")
def llm(checkpoint_factory):
    folder = checkpoint_factory("LlamaForCausalLM")
    return folder, LLM(model=str(folder), backend="cpu", dtype="float32")


def _hf_ids(folder, conversation: list[dict], **kwargs) -> list[int]:
    """transformers' apply_chat_template on the same conversation, its content parts joined to text."""
    import transformers

    def text(content) -> str:
        return content if isinstance(content, str) else "".join(part["text"] for part in content)

    messages = [{**m, "content": text(m["content"])} for m in conversation]
    want = transformers.AutoTokenizer.from_pretrained(folder).apply_chat_template(messages, tokenize=True, **kwargs)
    return list(want["input_ids"] if hasattr(want, "keys") else want)  # transformers 5 returns a BatchEncoding


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_renders_as_transformers_and_generates_as_generate(llm, add_generation_prompt):
    folder, engine = llm
    outs = engine.chat(CONVERSATIONS, GREEDY, use_tqdm=False, add_generation_prompt=add_generation_prompt)
    for conversation, out in zip(CONVERSATIONS, outs, strict=True):
        assert out.prompt_token_ids == _hf_ids(folder, conversation, add_generation_prompt=add_generation_prompt)
        alone = engine.generate({"prompt_token_ids": out.prompt_token_ids}, GREEDY, use_tqdm=False)[0]
        assert out.outputs[0].token_ids == alone.outputs[0].token_ids
    # one conversation alone is one output
    assert len(engine.chat(CONVERSATIONS[0], GREEDY, use_tqdm=False)) == 1


def test_chat_errors_are_clear(llm):
    _, engine = llm
    with pytest.raises(ValueError, match="role"):
        engine.chat([{"role": "wizard", "content": "x"}], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="image_url"):
        engine.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], GREEDY,
                    use_tqdm=False)
    assert engine.engine.kv.num_free_blocks == engine.engine.kv.num_usable_blocks


def test_chat_template_override(llm, tmp_path):
    folder, engine = llm
    template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                "{% if add_generation_prompt %}>{% endif %}")
    file = tmp_path / "template.jinja"
    file.write_text(template, encoding="utf-8")
    want = _hf_ids(folder, CONVERSATIONS[1], chat_template=template, add_generation_prompt=True)
    for source in (template, str(file)):
        out = engine.chat(CONVERSATIONS[1], GREEDY, use_tqdm=False, chat_template=source)[0]
        assert out.prompt_token_ids == want
    with pytest.raises(ValueError, match="does not compile"):
        engine.chat(CONVERSATIONS[0], GREEDY, use_tqdm=False, chat_template="{% for m in messages %}")


def test_serve_chat_template_flag(checkpoint_factory, tmp_path):
    folder = checkpoint_factory("LlamaForCausalLM")
    file = tmp_path / "plain.jinja"
    file.write_text("{% for m in messages %}{{ m.content }}{% endfor %}", encoding="utf-8")
    live = LiveServer(folder, "--chat-template", str(file)).wait_ready()
    try:
        r = httpx.post(f"{live.url}/v1/chat/completions", timeout=30, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 1})
        assert r.status_code == 200, r.text
        tok = Tokenizer.from_pretrained(folder)
        assert r.json()["usage"]["prompt_tokens"] == len(tok.encode("hello world", add_special_tokens=False))
    finally:
        live.stop()
    bad = subprocess.run([sys.executable, "-m", "unifer.cli", "serve", str(folder), "--chat-template", "{% if %}"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "does not compile" in bad.stderr
