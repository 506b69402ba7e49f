"""The runner's decode-graph path (static buffers, padding to buckets, replay) gives transformers' tokens.

The graph runner here "captures" by keeping the callable and replays by calling it again on the static buffers,
which is exactly what a CUDA graph replay computes; so any padding or buffer-filling fault shows on the CPU."""

from __future__ import annotations

import pytest
from hf_reference import hf_greedy
from test_hf_equivalence import PARAMS, _assert_matches_hf, _prompts
from unifer import LLM
from unifer.engine.runner import decode_buckets
from unifer_cpu.backend import CPUBackend


class RecordingGraphRunner:
    def __init__(self) -> None:
        self.replays = 0

    def capture(self, fn):
        fn()

        def replay():
            self.replays += 1
            return fn()

        return replay


def test_decode_buckets():
    assert decode_buckets(1) == [1]
    assert decode_buckets(6) == [1, 2, 4, 6]
    assert decode_buckets(20) == [1, 2, 4, 8, 16, 20]
    assert decode_buckets(1000)[-3:] == [240, 248, 256]


@pytest.mark.parametrize("num_prompts", [5, 8])
def test_replayed_decode_matches_transformers(checkpoint_factory, monkeypatch, num_prompts):
    folder = checkpoint_factory("Qwen2ForCausalLM")
    runner = RecordingGraphRunner()
    monkeypatch.setattr(CPUBackend, "graph_runner", lambda self: runner)
    prompts = _prompts(seed=5)[:num_prompts]
    llm = LLM(model=str(folder), backend="cpu", dtype="float32", max_num_seqs=12)
    assert llm.engine.runner.graph_buckets == [1, 2, 4, 8, 12]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], PARAMS, use_tqdm=False)
    _assert_matches_hf(outputs, hf_greedy(folder, prompts, PARAMS.max_tokens))
    assert runner.replays >= PARAMS.max_tokens - 1  # every pure-decode step replayed
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_usable_blocks


def test_enforce_eager_never_captures(checkpoint_factory, monkeypatch):
    folder = checkpoint_factory("Qwen2ForCausalLM")
    runner = RecordingGraphRunner()
    monkeypatch.setattr(CPUBackend, "graph_runner", lambda self: runner)
    llm = LLM(model=str(folder), backend="cpu", dtype="float32", max_num_seqs=4, enforce_eager=True)
    llm.generate([{"prompt_token_ids": [5, 6, 7]}], PARAMS, use_tqdm=False)
    assert llm.engine.runner.graph_buckets == [] and runner.replays == 0


def test_replay_takes_the_shortest_graph_covering_the_longest_sequence(checkpoint_factory, monkeypatch):
    """A backend listing several contexts gets a graph per context and bucket; each replay runs the shortest
    graph whose context covers the batch's longest sequence, and the tokens stay transformers'."""
    folder = checkpoint_factory("LlamaForCausalLM")
    used = []  # (the replayed graph's context, the longest sequence it ran)

    class ContextRecorder(RecordingGraphRunner):
        def capture(self, fn):
            metadata = fn.args[-1]  # the runner captures partial(_decode_logits, bucket, metadata)
            replay = super().capture(fn)

            def recorded():
                used.append((metadata.max_seq_len, int(metadata.seq_lens.max())))
                return replay()

            return recorded

    listed = [20, 40, 60]
    monkeypatch.setattr(CPUBackend, "graph_runner", lambda self: ContextRecorder())
    monkeypatch.setattr(CPUBackend, "decode_graph_contexts", lambda self, **kw: listed + [10**6])
    llm = LLM(model=str(folder), backend="cpu", dtype="float32", max_num_seqs=4, max_model_len=128)
    graphs = llm.engine.runner._graphs
    assert {b: [c for c, _ in g] for b, g in graphs.items()} == {b: [20, 40, 60, 128] for b in (1, 2, 4)}
    prompts = _prompts(seed=9)
    for prompt in prompts:  # one at a time, so the longest sequence is short for the short prompts
        outputs = llm.generate([{"prompt_token_ids": prompt}], PARAMS, use_tqdm=False)
        _assert_matches_hf(outputs, hf_greedy(folder, [prompt], PARAMS.max_tokens))
    contexts = listed + [128]
    assert all(context == min(c for c in contexts if c >= longest) for context, longest in used)
    assert {context for context, _ in used} == set(contexts)
