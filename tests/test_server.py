"""The OpenAI-compatible server, end to end: the official openai client against a live ``unifer serve``."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from server_fixture import LiveServer

MAX_MODEL_LEN = 256


@pytest.fixture(scope="module")
def server(checkpoint_factory):
    live = LiveServer(checkpoint_factory("LlamaForCausalLM"), "--max-model-len", str(MAX_MODEL_LEN)).wait_ready()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_health_version(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/version").json()["version"]


def test_completion_streamed_equals_unstreamed(client):
    kwargs = dict(model="tiny", prompt="hello world", max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**kwargs)
    choice = full.choices[0]
    assert choice.finish_reason == "length" and full.usage.completion_tokens == 12
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_completion_prompt_forms_n_and_logprobs(client):
    ids = [0, 40, 41, 42]
    out = client.completions.create(model="tiny", prompt=[ids, "the model"], max_tokens=4, n=2, temperature=0,
                                    logprobs=3, seed=1)
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    for c in out.choices:
        assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) == len(c.logprobs.top_logprobs)
        # top-3 plus the sampled token; byte-fragment tokens that decode alike share one key
        assert all(1 <= len(top) <= 4 for top in c.logprobs.top_logprobs)
    assert out.choices[0].text == out.choices[1].text  # greedy: both samples of a prompt agree
    alone = client.completions.create(model="tiny", prompt=ids, max_tokens=4, temperature=0)
    assert alone.choices[0].text == out.choices[0].text
    stopped = client.completions.create(model="tiny", prompt="hello", max_tokens=20, temperature=0.8, top_p=0.9,
                                        seed=3, presence_penalty=0.5, frequency_penalty=0.5, stop=["e"],
                                        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.2})
    assert "e" not in stopped.choices[0].text


def test_logit_bias_forces_and_bans_tokens(server, client):
    forced = client.completions.create(model="tiny", prompt=[40, 41], max_tokens=4, temperature=1.0, seed=0,
                                       logit_bias={"17": 100}, logprobs=0)
    free = client.completions.create(model="tiny", prompt=[40, 41], max_tokens=4, temperature=0, logprobs=0)
    assert forced.choices[0].logprobs.tokens == [tokenizer(server).decode([17])] * 4
    first = free.choices[0].logprobs.tokens[0]
    banned = client.completions.create(model="tiny", prompt=[40, 41], max_tokens=1, temperature=0, logprobs=0,
                                       logit_bias={str(t): -100 for t in token_ids(server, first)})
    assert banned.choices[0].logprobs.tokens[0] != first
    # fields that change nothing here are accepted
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                          response_format={"type": "text"}, tool_choice="none",
                                          tools=[{"type": "function", "function": {"name": "f"}}])
    assert chat.choices[0].message.content is not None
    assert client.completions.create(model="tiny", prompt="x", max_tokens=2, n=2, best_of=2).choices


def token_ids(server, text: str) -> list[int]:
    """Every token id that decodes to ``text`` (byte-fallback pieces can share one)."""
    tok = tokenizer(server)
    return [t for t in range(tok.get_vocab_size()) if tok.decode([t]) == text]


def tokenizer(server):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(server.model / "tokenizer.json"))


def test_tokenize_and_detokenize(server):
    tok = tokenizer(server)
    r = httpx.post(f"{server.url}/tokenize", json={"model": "tiny", "prompt": "hello world"}, timeout=30).json()
    assert r["tokens"] == tok.encode("hello world").ids and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == MAX_MODEL_LEN
    bare = httpx.post(f"{server.url}/tokenize", json={"prompt": "hello world", "add_special_tokens": False}).json()
    assert bare["tokens"] == tok.encode("hello world", add_special_tokens=False).ids
    messages = [{"role": "user", "content": "hi"}]
    chat = httpx.post(f"{server.url}/tokenize", json={"messages": messages}).json()
    completion = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": messages, "max_tokens": 1},
                            timeout=30).json()
    assert chat["count"] == completion["usage"]["prompt_tokens"]
    back = httpx.post(f"{server.url}/detokenize", json={"tokens": bare["tokens"]}).json()
    assert back["prompt"] == tok.decode(bare["tokens"], skip_special_tokens=False)
    bad = [
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": "x", "messages": messages}, "prompt"),
        ("/detokenize", {"tokens": [10**6]}, "tokens"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
    ]
    for path, body, param in bad:
        r = httpx.post(f"{server.url}{path}", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (path, body, r.text)


def test_chat_streamed_and_not(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"}, {"role": "user", "content": "the cache"}]
    full = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=8, temperature=0,
                                          logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    msg = full.choices[0]
    assert msg.message.role == "assistant" and msg.finish_reason == "length"
    assert len(msg.logprobs.content) == 8 and all(len(t.top_logprobs) == 2 for t in msg.logprobs.content)
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == msg.message.content
    assert chunks[-1].usage.completion_tokens == 8


def test_errors_are_openai_shaped(server, client):
    url = f"{server.url}/v1"
    cases = [
        ("/completions", {"model": "tiny", "prompt": "x", "temperature": -1}, 400, "temperature"),
        ("/completions", {"model": "tiny", "prompt": "x", "max_tokens": MAX_MODEL_LEN}, 400, "max_tokens"),
        ("/completions", {"model": "tiny", "prompt": [7] * MAX_MODEL_LEN}, 400, "prompt"),
        ("/completions", {"model": "tiny", "prompt": [10**9]}, 400, None),
        ("/completions", {"model": "tiny", "prompt": []}, 400, "prompt"),
        ("/completions", {"model": "nope", "prompt": "x"}, 404, "model"),
        ("/chat/completions", {"model": "tiny", "messages": []}, 400, "messages"),
        ("/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                               "max_completion_tokens": 10**6}, 400, "max_completion_tokens"),
        ("/chat/completions", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages"),
        ("/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, 400, "messages"),
        ("/completions", {"model": "tiny", "prompt": "x", "logit_bias": {"5": 101}}, 400, "logit_bias"),
        ("/completions", {"model": "tiny", "prompt": "x", "min_tokens": -1}, 400, "min_tokens"),
        ("/completions", {"model": "tiny", "prompt": "x", "max_tokens": 2, "min_tokens": 3}, 400, None),
        ("/completions", {"model": "tiny", "prompt": "x", "logit_bias": {"abc": 1}}, 400, "logit_bias"),
        ("/completions", {"model": "tiny", "prompt": "x", "logit_bias": {str(10**6): 1}}, 400, None),
        # OpenAI fields whose meaning this server lacks are refused, never silently dropped
        ("/completions", {"model": "tiny", "prompt": "x", "best_of": 3}, 400, "best_of"),
        ("/completions", {"model": "tiny", "prompt": "x", "suffix": "end"}, 400, "suffix"),
        ("/completions", {"model": "tiny", "prompt": "x", "echo": True}, 400, "echo"),
        ("/completions", {"model": "tiny", "prompt": "x", "prompt_logprobs": 1}, 400, "prompt_logprobs"),
        ("/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                               "guided_choice": ["a", "b"]}, 400, "guided_choice"),
        ("/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                               "response_format": {"type": "json_object"}}, 400, "response_format"),
        ("/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                               "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ("/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                               "functions": [{"name": "f"}]}, 400, "functions"),
    ]
    for path, body, status, param in cases:
        r = httpx.post(url + path, json=body, timeout=30)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        if param is not None:
            assert err["param"] == param, (body, err)
    r = httpx.post(url + "/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(url + "/completions", content=b"x" * (5 * 1024 * 1024), headers={"content-type": "application/json"})
    assert r.status_code == 413
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=MAX_MODEL_LEN * 2)
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_disconnect_mid_stream_frees_blocks(server):
    finished_before = server.metric("unifer_requests_finished_total")
    body = {"model": "tiny", "prompt": "hello world", "max_tokens": MAX_MODEL_LEN - 10, "stream": True,
            "ignore_eos": True, "temperature": 0}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
        assert server.metric("unifer_kv_cache_usage_ratio") > 0
    deadline = time.monotonic() + 10
    while server.metric("unifer_kv_cache_usage_ratio") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.metric("unifer_kv_cache_usage_ratio") == 0
    assert server.metric("unifer_num_requests_running") == 0
    # aborted, not run to its end
    assert server.metric("unifer_requests_finished_total") == finished_before


def test_64_concurrent_streams_match_alone(server, client):
    prompts = [f"the {w} of block {i}" for i, w in enumerate(["cache", "model", "token", "stream"] * 16)]
    alone = [client.completions.create(model="tiny", prompt=p, max_tokens=10, temperature=0,
                                       extra_body={"ignore_eos": True}).choices[0].text for p in prompts]

    async def run() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)

        async def one(p: str) -> str:
            stream = await aclient.completions.create(model="tiny", prompt=p, max_tokens=10, temperature=0,
                                                      stream=True, extra_body={"ignore_eos": True})
            return "".join([c.choices[0].text async for c in stream if c.choices])

        try:
            return await asyncio.gather(*(one(p) for p in prompts))
        finally:
            await aclient.close()

    assert asyncio.run(run()) == alone
    assert server.metric("unifer_kv_cache_usage_ratio") == 0
