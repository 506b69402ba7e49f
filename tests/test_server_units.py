"""AsyncLLMEngine and chat-template rendering, in process (no HTTP)."""

from __future__ import annotations

import asyncio

import pytest
from unifer.config import CacheConfig, EngineConfig, ModelConfig
from unifer.engine.async_engine import AsyncLLMEngine, EngineStepError, Overloaded
from unifer.engine.engine import LLMEngine
from unifer.sample.params import SamplingParams
from unifer.server.chat import ChatTemplateError, render_chat
from unifer.server.protocol import ChatMessage

GREEDY = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def llm_engine(checkpoint_factory):
    config = EngineConfig(model=ModelConfig(model=str(checkpoint_factory("LlamaForCausalLM")), max_model_len=128),
                          cache=CacheConfig(num_blocks=64))
    return LLMEngine(config)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_generate_and_early_close_frees_blocks(llm_engine):
    engine = AsyncLLMEngine(llm_engine)

    async def main():
        outs = [o async for o in engine.generate("a", [0, 5, 6, 7], GREEDY)]
        assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 40
        gen = engine.generate("b", [0, 5, 6, 7], GREEDY)
        first = await gen.__anext__()
        assert first.outputs[0].token_ids == outs[-1].outputs[0].token_ids[:1]
        await gen.aclose()  # the client went away
        await asyncio.sleep(0.2)
        await engine.shutdown()

    run(main())
    assert llm_engine.kv.usage == 0 and not llm_engine.has_unfinished_requests()


def test_waiting_bound_raises_overloaded(llm_engine):
    engine = AsyncLLMEngine(llm_engine, max_waiting=1)

    async def main():
        s1 = await engine.add_request("x1", [0, 5], GREEDY)
        with pytest.raises(Overloaded):  # added before any step could admit x1, so x1 still waits
            await engine.add_request("x2", [0, 5], GREEDY)
        with pytest.raises(ValueError, match="waiting-queue bound"):
            await engine.add_request("x3", [0, 5], SamplingParams(n=2))
        assert [o async for o in s1][-1].finished
        await engine.shutdown()

    run(main())
    assert llm_engine.kv.usage == 0


def test_engine_error_reaches_every_stream(llm_engine, monkeypatch):
    engine = AsyncLLMEngine(llm_engine)

    def broken_step():
        raise RuntimeError("device lost")

    async def main():
        monkeypatch.setattr(llm_engine, "step", broken_step)
        streams = [await engine.add_request(f"e{i}", [0, 5, 6], GREEDY) for i in range(3)]
        for s in streams:
            with pytest.raises(EngineStepError, match="device lost"):
                await s.__anext__()
        monkeypatch.undo()
        # the loop survives: a later request is served normally
        outs = [o async for o in engine.generate("after", [0, 5, 6], GREEDY)]
        assert outs[-1].finished
        await engine.shutdown()

    run(main())
    assert llm_engine.kv.usage == 0 and not llm_engine.has_unfinished_requests()


def test_bad_request_is_value_error(llm_engine):
    engine = AsyncLLMEngine(llm_engine)

    async def main():
        with pytest.raises(ValueError, match="max_model_len"):
            await engine.add_request("long", [5] * 200, GREEDY)
        with pytest.raises(ValueError, match="vocabulary"):
            await engine.add_request("vocab", [10**6], GREEDY)
        await engine.shutdown()

    run(main())


def test_chat_template_rendering_and_sandbox():
    msgs = [ChatMessage(role="system", content="s"), ChatMessage(role="user", content=[{"type": "text", "text": "u"}])]
    template = ("{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}"
                "{% if add_generation_prompt %}>{% endif %}")
    assert render_chat(template, msgs) == "[system:s][user:u]>"
    with pytest.raises(ChatTemplateError, match="no chat template") as e:
        render_chat(None, msgs)
    assert e.value.param == "messages"
    with pytest.raises(ChatTemplateError, match="rejected"):
        render_chat("{{ raise_exception('no system role') }}", msgs)
    with pytest.raises(ChatTemplateError):  # the sandbox refuses the classic escape
        render_chat("{{ ''.__class__.__mro__[1].__subclasses__() }}", msgs)
    with pytest.raises(ChatTemplateError):
        render_chat("{{ messages.append(1) }}", msgs)  # immutable sandbox: no mutation
    with pytest.raises(ChatTemplateError, match="compile"):
        render_chat("{% for %}", msgs)


def test_backend_stats_reach_metrics(llm_engine, monkeypatch):
    from unifer.server.metrics import ServerMetrics

    counts = {"compilations": 0}
    monkeypatch.setattr(llm_engine.backend, "stats", lambda: dict(counts, label="not numeric"), raising=False)
    engine = AsyncLLMEngine(llm_engine)
    metrics = ServerMetrics(engine, "m")

    async def main():
        counts["compilations"] = 7  # read after each step, not at construction
        assert [o async for o in engine.generate("s", [0, 5, 6], GREEDY)][-1].finished
        await engine.shutdown()

    run(main())
    text = metrics.render()[0].decode()
    assert 'unifer_backend_compilations{model_name="m"} 7.0' in text
    assert "unifer_backend_label" not in text
