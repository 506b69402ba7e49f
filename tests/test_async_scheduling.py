"""Asynchronous scheduling (each step launched before the last one's tokens are read) gives exactly the outputs
of synchronous scheduling, and transformers' tokens, through stops, sampling, preemption, prefix caching and aborts.

The CPU backend finishes its ops before they return, so its step event has nothing to wait for: these tests check
the engine's bookkeeping (placeholders filled on the device, outputs one step late, the dropped extra token, freed
blocks). The GPU backends run the same comparison against real events in the conformance suite."""

from __future__ import annotations

import pytest
from hf_reference import hf_greedy
from test_decode_graphs import RecordingGraphRunner
from test_hf_equivalence import PARAMS, _assert_matches_hf, _prompts
from unifer import LLM, SamplingParams
from unifer.engine.runner import ModelRunner
from unifer_cpu.backend import CPUBackend


class HostEvent:
    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


@pytest.fixture
def with_events(monkeypatch):
    """The CPU backend with step events, counting the steps that took a token from the device."""
    monkeypatch.setattr(CPUBackend, "step_event", lambda self: HostEvent())
    filled = []
    execute = ModelRunner.execute

    def spy(self, batch, prev_tokens=None):
        filled.append(prev_tokens is not None)
        return execute(self, batch, prev_tokens)

    monkeypatch.setattr(ModelRunner, "execute", spy)
    return filled


def _run(folder, prompts, params, *, async_scheduling, **options):
    llm = LLM(model=str(folder), backend="cpu", dtype="float32", async_scheduling=async_scheduling, **options)
    assert llm.engine.async_scheduling is async_scheduling
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_usable_blocks  # nothing leaked
    return llm, outputs


def _assert_same(got, want):
    """Same tokens, text and finish; logprobs equal up to float32 noise (a step's batch differs between the two
    modes: the asynchronous one also computes the token after a stop, which changes reduction orders)."""
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g.outputs, w.outputs, strict=True):
            assert (a.token_ids, a.text, a.finish_reason, a.stop_reason) == (b.token_ids, b.text, b.finish_reason,
                                                                               b.stop_reason)
            assert (a.logprobs is None) == (b.logprobs is None)
            for x, y in zip(a.logprobs or (), b.logprobs or (), strict=True):
                assert x.keys() == y.keys() and all(abs(x[k] - y[k]) < 1e-5 for k in x)


@pytest.mark.parametrize("graphs", [False, True])
def test_async_greedy_matches_transformers(checkpoint_factory, monkeypatch, with_events, graphs):
    folder = checkpoint_factory("LlamaForCausalLM")
    if graphs:
        monkeypatch.setattr(CPUBackend, "graph_runner", lambda self: RecordingGraphRunner())
    prompts = _prompts(seed=7)
    _, outputs = _run(folder, prompts, PARAMS, async_scheduling=True, max_num_seqs=8)
    _assert_matches_hf(outputs, hf_greedy(folder, prompts, PARAMS.max_tokens))
    assert sum(with_events) >= PARAMS.max_tokens - 1  # every decode step read its tokens from the device


def test_async_stops_sampling_and_logprobs_match_sync(checkpoint_factory, with_events):
    folder = checkpoint_factory("LlamaForCausalLM")
    prompts = _prompts(seed=8)
    # Stops taken from a first synchronous run, so they fire part-way through generation.
    _, probe = _run(folder, prompts[:2], SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True),
                    async_scheduling=False)
    stop_token = probe[0].outputs[0].token_ids[5]
    text = probe[1].outputs[0].text
    stop_text = text[len(text) // 2:len(text) // 2 + 2]
    params = [
        SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop_token_ids=[stop_token]),
        SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop=[stop_text]),
        SamplingParams(max_tokens=1, temperature=0.0),
        SamplingParams(max_tokens=2, temperature=0.0, logprobs=3),
        SamplingParams(max_tokens=12, temperature=0.9, top_p=0.8, seed=11, n=2),
        SamplingParams(max_tokens=10, temperature=0.7, top_k=20, seed=5, logprobs=0),
        SamplingParams(max_tokens=9, temperature=0.0, repetition_penalty=1.3, frequency_penalty=0.5),
        SamplingParams(max_tokens=None, temperature=0.0),  # runs to max_model_len unless EOS comes first
    ]
    options = dict(max_model_len=96)
    sync_llm, sync = _run(folder, prompts, params, async_scheduling=False, **options)
    async_llm, asynchronous = _run(folder, prompts, params, async_scheduling=True, **options)
    _assert_same(asynchronous, sync)
    assert [o.outputs[0].finish_reason for o in sync[:3]] == ["stop", "stop", "length"]
    assert async_llm.engine.num_generated_tokens == sync_llm.engine.num_generated_tokens
    assert any(with_events)


@pytest.mark.parametrize("variant", ["preemption", "prefix_cache", "chunked_prefill"])
def test_async_scheduling_variants_match_sync(checkpoint_factory, with_events, variant):
    folder = checkpoint_factory("LlamaForCausalLM")
    options = {"preemption": dict(num_blocks=14), "prefix_cache": dict(max_num_seqs=3),
               "chunked_prefill": dict(max_num_batched_tokens=24)}[variant]
    prompts = _prompts(seed=9, shared_prefix=40 if variant == "prefix_cache" else 0)
    sync_llm, sync = _run(folder, prompts, PARAMS, async_scheduling=False, **options)
    async_llm, asynchronous = _run(folder, prompts, PARAMS, async_scheduling=True, **options)
    _assert_same(asynchronous, sync)
    if variant == "preemption":
        assert async_llm.engine.scheduler.num_preemptions > 0
    if variant == "prefix_cache":
        assert async_llm.engine.kv.prefix_hits == sync_llm.engine.kv.prefix_hits > 0


def test_async_abort_between_steps_frees_blocks(checkpoint_factory, with_events):
    folder = checkpoint_factory("LlamaForCausalLM")
    llm = LLM(model=str(folder), backend="cpu", dtype="float32", async_scheduling=True)
    engine = llm.engine
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(_prompts(seed=10, count=3)):
        engine.add_request(str(i), {"prompt_token_ids": prompt}, params)
    seen: dict[str, list[int]] = {}
    for _ in range(4):
        for out in engine.step():
            seen[out.request_id] = out.outputs[0].token_ids
    assert engine.abort_request("1")
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.request_id != "1"
            seen[out.request_id] = out.outputs[0].token_ids
    assert engine.kv.num_free_blocks == engine.kv.num_usable_blocks
    _, sync = _run(folder, _prompts(seed=10, count=3), params, async_scheduling=False)
    assert seen["0"] == sync[0].outputs[0].token_ids and seen["2"] == sync[2].outputs[0].token_ids


def test_async_scheduling_needs_step_events(checkpoint_factory):
    folder = checkpoint_factory("LlamaForCausalLM")
    with pytest.raises(ValueError, match="no step events"):
        LLM(model=str(folder), backend="cpu", dtype="float32", async_scheduling=True)
    assert LLM(model=str(folder), backend="cpu", dtype="float32").engine.async_scheduling is False


def test_async_engine_streams_and_disconnects(checkpoint_factory, with_events):
    """The server's AsyncLLMEngine over an asynchronously scheduled engine: concurrent streams end with the
    tokens of a synchronous run, and a client that goes away mid-stream leaves no block behind."""
    import asyncio

    from unifer.config import EngineConfig, ModelConfig
    from unifer.engine.async_engine import AsyncLLMEngine
    from unifer.engine.engine import LLMEngine

    folder = checkpoint_factory("LlamaForCausalLM")
    prompts = _prompts(seed=12, count=4)
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    _, sync = _run(folder, prompts, params, async_scheduling=False)
    engine = LLMEngine(EngineConfig(model=ModelConfig(model=str(folder), dtype="float32")))
    assert engine.async_scheduling
    server = AsyncLLMEngine(engine)

    async def consume(i):
        return [o async for o in server.generate(str(i), {"prompt_token_ids": prompts[i]}, params)][-1]

    async def main():
        leaving = server.generate("leaving", {"prompt_token_ids": prompts[0]}, params)
        await leaving.__anext__()
        finals = await asyncio.gather(*(consume(i) for i in range(4)), leaving.aclose())
        await asyncio.sleep(0.2)
        await server.shutdown()
        return finals[:4]

    finals = asyncio.run(asyncio.wait_for(main(), 60))
    assert [f.outputs[0].token_ids for f in finals] == [o.outputs[0].token_ids for o in sync]
    assert engine.kv.num_free_blocks == engine.kv.num_usable_blocks and not engine.has_unfinished_requests()


def test_async_graphs_past_the_largest_bucket_match_sync(checkpoint_factory, monkeypatch, with_events):
    """More running sequences than the largest decode graph holds (256): those steps run eagerly. Once requests
    finish, graphs take over, and their rows take tokens that the last eager step sampled in rows past 256."""
    import random

    folder = checkpoint_factory("LlamaForCausalLM")
    rng = random.Random(13)
    prompts = [[rng.randrange(4, 512) for _ in range(rng.randint(1, 6))] for _ in range(264)]
    params = [SamplingParams(max_tokens=2 + i % 6, temperature=0.0, ignore_eos=True) for i in range(264)]
    options = dict(max_num_seqs=264, max_num_batched_tokens=2048, max_model_len=32)
    _, sync = _run(folder, prompts, params, async_scheduling=False, **options)
    graphs = RecordingGraphRunner()
    monkeypatch.setattr(CPUBackend, "graph_runner", lambda self: graphs)
    llm, asynchronous = _run(folder, prompts, params, async_scheduling=True, **options)
    assert llm.engine.runner.graph_buckets[-1] == 256 and graphs.replays > 0
    _assert_same(asynchronous, sync)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_min_tokens_holds_off_eos_stop_ids_and_stop_strings(checkpoint_factory, with_events, async_scheduling):
    folder = checkpoint_factory("LlamaForCausalLM")
    prompts = _prompts(seed=12, count=3)
    _, probe = _run(folder, prompts, SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True),
                    async_scheduling=False)
    first = [o.outputs[0].token_ids for o in probe]
    stop_text = probe[2].outputs[0].text[:1]
    llm = LLM(model=str(folder), backend="cpu", dtype="float32", async_scheduling=async_scheduling)
    eos = min(llm.engine.tokenizer.eos_token_ids)
    params = [
        # EOS is pushed to the top of every row, so only the ban keeps it out of the first four tokens
        SamplingParams(max_tokens=24, temperature=0.0, min_tokens=4, logit_bias={eos: 100.0}),
        SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, min_tokens=6, stop_token_ids=[first[1][1]]),
        SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, min_tokens=5, stop=[stop_text]),
    ]
    out = [o.outputs[0] for o in llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)]
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_usable_blocks
    assert out[0].token_ids[4] == eos and len(out[0].token_ids) == 5 and out[0].finish_reason == "stop"
    assert eos not in out[0].token_ids[:4]
    # the stop id, banned for six tokens, as a -100 bias bans it: the same first six greedy tokens
    _, biased = _run(folder, prompts[1:2], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True,
                                                          logit_bias={first[1][1]: -100.0}), async_scheduling=False)
    assert out[1].token_ids[:6] == biased[0].outputs[0].token_ids and len(out[1].token_ids) > 6
    # the stop string, which the first token's text already holds, ends the sequence from the fifth token on;
    # sampling itself is unchanged
    assert len(out[2].token_ids) >= 5 and out[2].token_ids == first[2][:len(out[2].token_ids)]
    assert out[2].finish_reason == "stop" and probe[2].outputs[0].text.startswith(out[2].text)
    _, early = _run(folder, prompts[2:], params[2].model_copy(update={"min_tokens": 0}), async_scheduling=False)
    assert len(early[0].outputs[0].token_ids) < 5


def test_min_tokens_above_max_tokens_is_refused():
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(max_tokens=3, min_tokens=4)
