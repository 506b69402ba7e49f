"""When the attention launcher builds the empty-segment exit: only for split-KV launches whose metadata only bounds
the contexts (the runner's graph captures), and only where the config row turns it on. Both kernels are replaced
by recorders, so no kernel runs; the interpreter cases check what the exit computes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from unifer.backends.backend import AttentionMetadata
from unifer.kernels.triton import module
from unifer.kernels.triton.configs import AttentionConfig


class _Recorder:
    def __init__(self):
        self.constexprs = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.constexprs.append(kwargs)


def _launch(monkeypatch, *, bound: bool, skip: int, segments: int) -> tuple[list, list]:
    att = module("attention")
    kernel, merge = _Recorder(), _Recorder()
    monkeypatch.setattr(att, "_unified_attention_kernel", kernel)
    monkeypatch.setattr(att, "_reduce_segments_kernel", merge)
    md = AttentionMetadata(
        query_start_loc=torch.tensor([0, 1], dtype=torch.int32), seq_lens=torch.tensor([40], dtype=torch.int32),
        block_table=torch.ones(1, 4, dtype=torch.int32), slot_mapping=torch.zeros(1, dtype=torch.int64),
        max_query_len=1, max_seq_len=2048, max_seq_len_is_bound=bound)
    att.unified_attention(torch.zeros(1, 4, 64), torch.zeros(2, 8, 16, 1, 64), md, scale=0.125,
                          num_segments=segments, config=replace(AttentionConfig(), skip_empty_segments=skip))
    return [k["SKIP_EMPTY"] for k in kernel.constexprs], [k["SKIP_EMPTY"] for k in merge.constexprs]


@pytest.mark.parametrize(("bound", "skip", "expected"), [(True, 1, True), (False, 1, False), (True, 0, False)])
def test_exit_only_in_bounded_launches_of_rows_that_turn_it_on(monkeypatch, bound, skip, expected):
    assert _launch(monkeypatch, bound=bound, skip=skip, segments=16) == ([expected], [expected])


def test_unsplit_launch_has_no_merge_and_no_exit(monkeypatch):
    # An unsplit graph (a bucket too large to split, or max_model_len below split_min_seq_len) then launches the
    # variant that warm_up compiles for eager steps, not one more at capture.
    assert _launch(monkeypatch, bound=True, skip=1, segments=1) == ([False], [])
