"""The runner's graphs for steps with prefill tokens (``mixed_graph_sizes``): static buffers, tokens padded to a
bucket and sequences to ``max_num_seqs``, the LM head after the replay; they give transformers' tokens.

As in test_decode_graphs.py, the graph runner "captures" by keeping the callable and replays by calling it again
on the static buffers, so any padding or buffer-filling fault shows on the CPU."""

from __future__ import annotations

import pytest
from hf_reference import hf_greedy
from test_async_scheduling import HostEvent
from test_decode_graphs import RecordingGraphRunner
from test_hf_equivalence import PARAMS, _assert_matches_hf, _prompts
from unifer import LLM
from unifer.engine.runner import ModelRunner
from unifer_cpu.backend import CPUBackend


@pytest.fixture
def mixed_replays(monkeypatch):
    """The CPU backend with the recording graph runner; returns per-step flags: did a step with prefill tokens
    replay a mixed graph."""
    monkeypatch.setattr(CPUBackend, "graph_runner", lambda self: RecordingGraphRunner())
    flags = []
    replay = ModelRunner._replay_mixed

    def spy(self, batch, prev_tokens):
        logits = replay(self, batch, prev_tokens)
        flags.append(logits is not None)
        return logits

    monkeypatch.setattr(ModelRunner, "_replay_mixed", spy)
    return flags


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_replayed_mixed_steps_match_transformers(checkpoint_factory, monkeypatch, mixed_replays, async_scheduling):
    # A 32-token budget chunks the longer prompts, so steps mix prefill chunks with decodes; every such step fits
    # the 32 bucket. Under asynchronous scheduling the decodes' tokens are placeholders filled on the device.
    if async_scheduling:
        monkeypatch.setattr(CPUBackend, "step_event", lambda self: HostEvent())
    folder = checkpoint_factory("Qwen2ForCausalLM")
    prompts = _prompts(seed=5)
    llm = LLM(model=str(folder), backend="cpu", dtype="float32", max_num_seqs=12, max_num_batched_tokens=32,
              mixed_graph_sizes=[8, 32], async_scheduling=async_scheduling)
    assert sorted(llm.engine.runner._mixed_graphs) == [8, 32]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], PARAMS, use_tqdm=False)
    _assert_matches_hf(outputs, hf_greedy(folder, prompts, PARAMS.max_tokens))
    assert len(mixed_replays) >= 4 and all(mixed_replays)
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_usable_blocks


def test_a_step_past_the_largest_size_runs_eagerly(checkpoint_factory, mixed_replays):
    folder = checkpoint_factory("LlamaForCausalLM")
    prompts = _prompts(seed=3)[-3:]  # 50 and 70 tokens: past the bucket of 16 until chunked below it
    llm = LLM(model=str(folder), backend="cpu", dtype="float32", max_num_seqs=4, max_num_batched_tokens=64,
              mixed_graph_sizes=[16])
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], PARAMS, use_tqdm=False)
    _assert_matches_hf(outputs, hf_greedy(folder, prompts, PARAMS.max_tokens))
    assert False in mixed_replays  # the first step (64 tokens) ran eagerly
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_usable_blocks


def test_no_mixed_graphs_by_default(checkpoint_factory, mixed_replays):
    folder = checkpoint_factory("LlamaForCausalLM")
    llm = LLM(model=str(folder), backend="cpu", dtype="float32", max_num_seqs=4)
    llm.generate([{"prompt_token_ids": [5, 6, 7]}], PARAMS, use_tqdm=False)
    assert llm.engine.runner._mixed_graphs == {} and mixed_replays == []


@pytest.mark.parametrize("max_num_seqs", [4, 2])
def test_mixed_step_buffers_and_logits(checkpoint_factory, mixed_replays, max_num_seqs):
    """One step by hand: a 10-token prefill chunk and a decode whose token is a placeholder. The static metadata
    is what the Triton attention needs (query starts non-decreasing, padding sequences empty at the end, padding
    tokens writing no slot), and the logits are those of the eager path on the same step. At max_num_seqs 2 the
    batch fills every block-table row, which must still be sent."""
    import torch

    folder = checkpoint_factory("LlamaForCausalLM")
    llm = LLM(model=str(folder), backend="cpu", dtype="float32", max_num_seqs=max_num_seqs, mixed_graph_sizes=[16])
    runner, bs = llm.engine.runner, llm.engine.kv.block_size
    batch = [(list(range(20, 30)), 0, 10, [1], True), ([11, 12, 13, 14, 15, -1], 5, 1, [2], True)]
    prev = torch.tensor([42])
    logits = runner.execute(batch, prev_tokens=prev)
    assert mixed_replays == [True]
    st = runner._mixed
    assert st["query_start"].tolist() == [0, 10, 11, 11, 11][:max_num_seqs + 1]
    assert st["seq_lens"].tolist() == [10, 6, 0, 0][:max_num_seqs]
    assert st["block_table"][:2, :1].tolist() == [[1], [2]]
    assert st["slots"][:11].tolist() == [bs + i for i in range(10)] + [2 * bs + 5]
    assert (st["slots"][11:] == -1).all()
    assert st["sampled"][:2].tolist() == [9, 10]
    assert st["tokens"][st["source"][:11]].tolist() == list(range(20, 30)) + [42]
    runner._mixed_graphs = {}
    eager = runner.execute([(list(range(20, 30)), 0, 10, [1], True), ([11, 12, 13, 14, 15, 42], 5, 1, [2], True)])
    torch.testing.assert_close(logits, eager)


def test_warm_up_bypasses_the_graphs(checkpoint_factory, mixed_replays):
    """The Triton warm-up compiles the eager steps' attention variants; routed through a graph it would compile
    nothing of them."""
    from unifer.kernels.triton.warmup import warm_up

    folder = checkpoint_factory("LlamaForCausalLM")
    llm = LLM(model=str(folder), backend="cpu", dtype="float32", max_num_seqs=4, mixed_graph_sizes=[64])
    steps = warm_up(llm.engine.runner, max_num_batched_tokens=64, max_num_seqs=4,
                    max_model_len=llm.engine.max_model_len)
    assert steps > 0 and mixed_replays == []


def test_conformance_case_passes_with_graphs_and_fails_a_wrong_replay(monkeypatch, mixed_replays):
    """The suite's e2e/graphs_match_eager case runs where a backend has a graph runner (here the CPU backend with
    the recording one): every step with prefill tokens replays, the case passes, and it fails when a replay's
    logits come from the wrong rows."""
    import torch
    from unifer_conformance.suite import run_suite

    case_id = "e2e/graphs_match_eager/llama"
    [case] = run_suite("cpu", keyword=case_id)["cases"]
    assert case["status"] == "PASS", case["message"]
    assert len(mixed_replays) >= 4 and all(mixed_replays)

    replay = ModelRunner._replay_mixed  # the spy: its flags still count

    def rows_swapped(self, batch, prev_tokens):
        logits = replay(self, batch, prev_tokens)
        return None if logits is None else torch.roll(logits, 1, dims=0)

    monkeypatch.setattr(ModelRunner, "_replay_mixed", rows_swapped)
    [case] = run_suite("cpu", keyword=case_id)["cases"]
    assert case["status"] == "FAIL" and "with graphs, against" in case["message"], case["message"]


class BatchGraphRunner(RecordingGraphRunner):
    """A graph runner with ``capture_many``, as the cuda backend's: records each call's steps."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def capture(self, fn):
        raise AssertionError("a runner with capture_many gets every step through it")

    def capture_many(self, fns):
        self.calls.append([(fn.func.__name__, fn.args[0]) for fn in fns])
        return [RecordingGraphRunner.capture(self, fn) for fn in fns]


def test_every_graph_in_one_capture_many_call(checkpoint_factory, monkeypatch):
    runner = BatchGraphRunner()
    monkeypatch.setattr(CPUBackend, "graph_runner", lambda self: runner)
    folder = checkpoint_factory("LlamaForCausalLM")
    prompts = _prompts(seed=5)
    llm = LLM(model=str(folder), backend="cpu", dtype="float32", max_num_seqs=12, max_num_batched_tokens=32,
              mixed_graph_sizes=[8, 32])
    decode = [("_decode_logits", b) for b in (12, 8, 4, 2, 1)]
    assert runner.calls == [decode + [("_mixed_hidden", 32), ("_mixed_hidden", 8)]]  # largest first, each kind
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], PARAMS, use_tqdm=False)
    _assert_matches_hf(outputs, hf_greedy(folder, prompts, PARAMS.max_tokens))
    assert runner.replays >= PARAMS.max_tokens
