"""The runner's decode-graph path (static buffers, padding to buckets, replay) gives transformers' tokens.

The graph runner here "captures" by keeping the callable and replays by calling it again on the static buffers,
which is exactly what a CUDA graph replay computes; so any padding or buffer-filling fault shows on the CPU."""

from __future__ import annotations

import pytest
import torch
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


def test_decode_graphs_share_one_logits_buffer(checkpoint_factory, monkeypatch):
    folder = checkpoint_factory("Qwen2ForCausalLM")
    monkeypatch.setattr(CPUBackend, "graph_runner", lambda self: RecordingGraphRunner())
    runner = LLM(model=str(folder), backend="cpu", dtype="float32", max_num_seqs=12).engine.runner
    with torch.inference_mode():  # as the engine replays
        outputs = {b: replay() for b, replay in runner._graphs.items()}
    assert {b: tuple(o.shape) for b, o in outputs.items()} == {b: (b, runner._logits.shape[1]) for b in outputs}
    assert {o.data_ptr() for o in outputs.values()} == {runner._logits.data_ptr()}


def test_model_without_logits_out(checkpoint_factory, monkeypatch):
    # A model provider's compute_logits may not take ``out``: each graph then keeps an output of its own.
    from unifer.model.llama import LlamaForCausalLM

    compute_logits = LlamaForCausalLM.compute_logits
    monkeypatch.setattr(LlamaForCausalLM, "compute_logits", lambda self, hidden: compute_logits(self, hidden))
    folder = checkpoint_factory("Qwen2ForCausalLM")
    runner = RecordingGraphRunner()
    monkeypatch.setattr(CPUBackend, "graph_runner", lambda self: runner)
    prompts = _prompts(seed=5)[:5]
    llm = LLM(model=str(folder), backend="cpu", dtype="float32", max_num_seqs=12)
    assert llm.engine.runner._logits is None
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], PARAMS, use_tqdm=False)
    _assert_matches_hf(outputs, hf_greedy(folder, prompts, PARAMS.max_tokens))
    assert runner.replays >= PARAMS.max_tokens - 1


def test_enforce_eager_never_captures(checkpoint_factory, monkeypatch):
    folder = checkpoint_factory("Qwen2ForCausalLM")
    runner = RecordingGraphRunner()
    monkeypatch.setattr(CPUBackend, "graph_runner", lambda self: runner)
    llm = LLM(model=str(folder), backend="cpu", dtype="float32", max_num_seqs=4, enforce_eager=True)
    llm.generate([{"prompt_token_ids": [5, 6, 7]}], PARAMS, use_tqdm=False)
    assert llm.engine.runner.graph_buckets == [] and runner.replays == 0


@pytest.mark.parametrize("sizes, replayed", [([8], True), ([1, 3], False)])
def test_graph_batch_sizes(checkpoint_factory, monkeypatch, sizes, replayed):
    # Five running sequences: padded to the bucket of 8, or past the largest of [1, 3] and so run eagerly.
    folder = checkpoint_factory("Qwen2ForCausalLM")
    runner = RecordingGraphRunner()
    monkeypatch.setattr(CPUBackend, "graph_runner", lambda self: runner)
    prompts = _prompts(seed=5)[:5]
    llm = LLM(model=str(folder), backend="cpu", dtype="float32", max_num_seqs=12, graph_batch_sizes=sizes)
    assert llm.engine.runner.graph_buckets == sizes
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], PARAMS, use_tqdm=False)
    _assert_matches_hf(outputs, hf_greedy(folder, prompts, PARAMS.max_tokens))
    assert (runner.replays >= PARAMS.max_tokens - 1) if replayed else runner.replays == 0
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_usable_blocks


@pytest.mark.parametrize("field, sizes", [("graph_batch_sizes", []), ("graph_batch_sizes", [0]),
                                          ("graph_batch_sizes", [4, 13]), ("mixed_graph_sizes", []),
                                          ("mixed_graph_sizes", [0]), ("mixed_graph_sizes", [64, 4097])])
def test_graph_sizes_rejected(tmp_path, field, sizes):
    # max_num_seqs 12 bounds a decode bucket, max_num_batched_tokens 4096 a mixed one.
    from unifer.config import EngineConfig, ModelConfig, SchedulerConfig

    with pytest.raises(ValueError, match=field):
        EngineConfig(model=ModelConfig(model=str(tmp_path)),
                     scheduler=SchedulerConfig(max_num_seqs=12, max_num_batched_tokens=4096), **{field: sizes})


def test_serve_parses_graph_sizes():
    import argparse

    from unifer.server.cli import add_serve_parser

    sub = argparse.ArgumentParser().add_subparsers()
    add_serve_parser(sub)
    parser = sub.choices["serve"]
    assert parser.parse_args(["m", "--graph-batch-sizes", "1", "2"]).graph_batch_sizes == [1, 2]
    assert parser.parse_args(["m", "--cuda-graph-sizes", "1"]).graph_batch_sizes == [1]
    assert parser.parse_args(["m", "--mixed-graph-sizes", "64", "256"]).mixed_graph_sizes == [64, 256]
    args = parser.parse_args(["m"])
    assert args.graph_batch_sizes is None and args.mixed_graph_sizes is None
