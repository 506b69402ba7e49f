"""``LLM.chat`` (vLLM's offline chat API) against transformers' ``apply_chat_template`` on the same checkpoint."""

from __future__ import annotations

import pytest
from unifer import LLM, SamplingParams

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


def _text_only(conversation: list[dict]) -> list[dict]:
    def text(content) -> str:
        return content if isinstance(content, str) else "".join(part["text"] for part in content)

    return [{**m, "content": text(m["content"])} for m in conversation]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_renders_as_transformers_and_generates_as_generate(llm, add_generation_prompt):
    import transformers

    folder, engine = llm
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    outs = engine.chat(CONVERSATIONS, GREEDY, use_tqdm=False, add_generation_prompt=add_generation_prompt)
    for conversation, out in zip(CONVERSATIONS, outs, strict=True):
        want = hf.apply_chat_template(_text_only(conversation), tokenize=True,
                                      add_generation_prompt=add_generation_prompt)
        assert out.prompt_token_ids == list(want["input_ids"] if hasattr(want, "keys") else want)
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
