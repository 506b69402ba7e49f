"""The TPU backend's static-shape machinery, on the CPU (no torch_xla needed): bucket arithmetic, inert padding of
the attention metadata, the XLA-friendly attention against the reference, and the engine's padded path (runner
+ sampler) generating what the unpadded CPU backend generates."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch
from plugin_dist import write_backend_dist
from tpu_steps import ragged_step
from unifer.ops import reference
from unifer.pow2 import next_pow2
from unifer.sample.params import SamplingParams
from unifer.sample.sampler import Sampler, SamplingState
from unifer_tpu import attention
from unifer_tpu.buckets import Buckets, ladder
from unifer_tpu.metadata import pad_metadata


# buckets ---------------------------------------------------------------------------------------------------------
def test_bucket_arithmetic_by_hand():
    assert [next_pow2(n) for n in (0, 1, 2, 3, 16, 17)] == [1, 1, 2, 4, 16, 32]
    assert next_pow2(3, minimum=16) == 16
    assert ladder(64, 16) == (16, 32, 64) and ladder(65, 16) == (16, 32, 64, 128) and ladder(5, 8) == (8,)
    b = Buckets.for_limits(max_num_batched_tokens=64, max_num_seqs=16, max_model_len=130, block_size=16)
    assert (b.tokens, b.seqs, b.block_table_width) == ((16, 32, 64), (8, 16), 9)
    assert b.pad(1, 1, 1) == (16, 8, 9)
    assert b.pad(16, 8, 9) == (16, 8, 9)  # a bucket pads to itself: padding twice changes nothing
    assert b.pad(17, 9, 3) == (32, 16, 9)
    assert b.pad(65, 17, 10) == (128, 32, 16)  # past the largest bucket: the next power of two
    # (16 tokens, 16 seqs) is reachable (9..16 sequences of 1 token); nothing else is excluded here.
    assert b.shapes() == [(16, 8), (16, 16), (32, 8), (32, 16), (64, 8), (64, 16)]
    tight = Buckets((16, 32), (8, 16, 32))
    assert (16, 32) not in tight.shapes() and (32, 32) in tight.shapes()  # 17 sequences need 17 tokens
    unconfigured = Buckets((16,), (8,))
    assert unconfigured.pad(3, 2, 5)[2] == 8  # no max_model_len yet: widths pad to powers of two


# metadata padding and the XLA-friendly attention -------------------------------------------------------------------
def test_kv_layout_interleaves_key_and_value_heads():
    _, ref_cache, tpu_cache, _ = ragged_step([(3, 2), (0, 6)])
    assert torch.equal(tpu_cache[:, :, 0::2].nan_to_num(7.0), ref_cache[0].nan_to_num(7.0))
    assert torch.equal(tpu_cache[:, :, 1::2].nan_to_num(7.0), ref_cache[1].nan_to_num(7.0))


def test_padding_slots_point_past_the_cache():
    slots = torch.tensor([5, -1, 0, -1, 9])
    assert attention.target_slots(slots, 5, 40).tolist() == [5, 40, 0, 40, 9]
    assert attention.target_slots(slots, 3, 40).tolist() == [5, 40, 0]  # only the tokens actually given


def test_pad_metadata_is_inert_and_shaped():
    _, _, _, md = ragged_step([(3, 2), (0, 6), (9, 1)])
    p = pad_metadata(md, 16, 8, 6)
    assert p.query_start_loc.tolist() == [0, 2, 8, 9, 9, 9, 9, 9, 9]
    assert p.seq_lens.tolist() == [5, 6, 10, 0, 0, 0, 0, 0]
    assert p.slot_mapping.tolist()[9:] == [-1] * 7 and p.slot_mapping.tolist()[:9] == md.slot_mapping.tolist()
    assert p.block_table.shape == (8, 6) and int(p.block_table[3:].abs().sum()) == 0
    assert int(p.block_table[:3, 3:].abs().sum()) == 0 and torch.equal(p.block_table[:3, :3], md.block_table)
    assert p.host_lists() == (p.query_start_loc.tolist(), p.seq_lens.tolist())
    assert (p.max_query_len, p.max_seq_len) == (md.max_query_len, md.max_seq_len)
    assert pad_metadata(p, 16, 8, 6) is p
    with pytest.raises(ValueError, match="cannot pad"):
        pad_metadata(md, 4, 8, 6)


@pytest.mark.parametrize("window, cap", [(None, None), (3, None), (None, 5.0), (4, 5.0)])
@pytest.mark.parametrize("seqs", [[(0, 5), (6, 1), (3, 4)], [(0, 1)], [(7, 1), (4, 1), (0, 9), (11, 5)]])
def test_xla_attention_matches_reference_with_padding(seqs, window, cap):
    q, ref_cache, tpu_cache, md = ragged_step(seqs)
    want = reference.paged_attention(q, ref_cache, md, scale=0.3, sliding_window=window, soft_cap=cap)
    padded = pad_metadata(md, 32, 8, 8)
    for meta in (md, padded):
        got = attention.paged_attention(q, tpu_cache, meta, scale=0.3, sliding_window=window, soft_cap=cap)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    junk = torch.cat([q, torch.full((32 - q.shape[0], *q.shape[1:]), 3.0, dtype=q.dtype)])
    got = attention.paged_attention(junk, tpu_cache, padded, scale=0.3, sliding_window=window, soft_cap=cap)
    torch.testing.assert_close(got[: q.shape[0]], want, rtol=0, atol=1e-12)
    assert torch.equal(got[q.shape[0]:], torch.zeros_like(got[q.shape[0]:]))  # padding saw nothing


def test_xla_attention_fails_a_wrong_block_table():
    """The comparison above can fail: a table pointing one block off reads NaN-poisoned or foreign pages."""
    q, ref_cache, tpu_cache, md = ragged_step([(6, 3), (2, 2)])
    want = reference.paged_attention(q, ref_cache, md, scale=0.3)
    wrong = pad_metadata(md, 16, 8, 4)
    wrong.block_table[0, 0] = wrong.block_table[1, 0]
    got = attention.paged_attention(q, tpu_cache, wrong, scale=0.3)
    assert not torch.allclose(got, want)


# the sampler ignores padding rows --------------------------------------------------------------------------------
def test_sampler_drops_padding_rows():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 50, generator=g)
    params = [SamplingParams(temperature=0.0, logprobs=3), SamplingParams(temperature=0.7, seed=11, logprobs=0),
              SamplingParams(temperature=0.0)]

    def states():
        return [SamplingState(p, [1, 2], [3], torch.Generator().manual_seed(p.seed) if p.seed else None)
                for p in params]

    sampler = Sampler(reference_ops())
    plain = sampler(logits[:3], states())
    padded = sampler(logits, states())
    assert padded.token_ids == plain.token_ids and padded.logprobs == plain.logprobs
    assert padded.sampled_logprob == plain.sampled_logprob and len(padded.token_ids) == 3
    with pytest.raises(ValueError, match="B >= 3"):
        sampler(logits[:2], states())


def reference_ops():
    from unifer.ops import resolve_ops

    return resolve_ops({})


# the engine's padded path ------------------------------------------------------------------------------------------
EMULATION = '''
"""The TPU backend's host-side logic on the CPU: its buckets, metadata padding, KV layout and attention."""
import torch
from unifer.backends import Availability, hookimpl
from unifer_tpu import attention
from unifer_tpu.backend import TPUBackend

SHAPES = []


def write_kv(key, value, kv_cache, slot_mapping):
    # XLA drops the out-of-range rows padding maps to; the CPU's index_copy_ raises instead, so drop them here.
    keep = slot_mapping[: key.shape[0]] >= 0
    attention.write_kv(key[keep], value[keep], kv_cache, slot_mapping[: key.shape[0]][keep])


class EmulatedTPU(TPUBackend):
    name = "tpu-on-cpu"

    def __init__(self):
        super().__init__()
        self.on_tpu, self.priority = False, -20

    def probe(self):
        return Availability(True, "test emulation")

    def init_device(self):
        pass

    def device(self, index=0):
        return torch.device("cpu")

    def synchronize(self):
        pass

    def seed(self, seed):
        torch.manual_seed(seed)

    def end_step(self):
        pass

    def native_ops(self):
        return dict(super().native_ops(), write_kv=write_kv)

    def pad_batch(self, **sizes):
        padded = super().pad_batch(**sizes)
        SHAPES.append((sizes["num_tokens"], sizes["num_seqs"], padded))
        return padded


@hookimpl
def unifer_register_backends(registry):
    registry.add(EmulatedTPU())
'''


@pytest.fixture(scope="module")
def emulation(tmp_path_factory):
    root = tmp_path_factory.mktemp("tpu-emulation")
    (root / "tpu_emulation.py").write_text(textwrap.dedent(EMULATION))
    write_backend_dist(root, "tpu_emulation", "tpu_emulation", "tpu_emulation")
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    yield importlib.import_module("tpu_emulation")
    sys.path.remove(str(root))
    sys.modules.pop("tpu_emulation", None)
    importlib.invalidate_caches()


def _generate(path, backend, params, prompts):
    from unifer import LLM

    llm = LLM(model=str(path), backend=backend, dtype="float32", block_size=16, num_blocks=64, max_model_len=256,
              max_num_batched_tokens=64, max_num_seqs=16, seed=0)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return llm, [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs]


def test_padded_engine_generates_what_the_cpu_backend_generates(emulation, monkeypatch):
    from unifer_conformance import tiny_models

    monkeypatch.setenv("UNIFER_TPU_WARMUP", "1")  # also runs the warm-up's dummy steps through runner and sampler
    path = tiny_models.checkpoint("llama", 64)
    prompts = [[(7 * i + 3 * j) % 500 + 2 for j in range(n)] for i, n in enumerate((5, 16, 17, 43, 70, 1, 33))]
    params = [SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=2)] * 4 + [
        SamplingParams(temperature=0.9, top_p=0.8, seed=5 + i, max_tokens=12, ignore_eos=True) for i in range(3)]
    emulation.SHAPES.clear()
    llm, got = _generate(path, "tpu-on-cpu", params, prompts)
    _, want = _generate(path, "cpu", params, prompts)
    assert [ids for ids, _ in got] == [ids for ids, _ in want]
    for (_, lp_got), (ids, lp_want) in zip(got[:4], want[:4], strict=True):
        assert max(abs(a[t] - b[t]) for a, b, t in zip(lp_got, lp_want, ids, strict=True)) < 1e-4
    assert llm.engine.backend.warmup_seconds is not None
    steps = emulation.SHAPES[len(llm.engine.backend.buckets.shapes()):]  # after the warm-up's dummy steps
    assert any(t < padded[0] for t, _, padded in steps) and any(s < padded[1] for _, s, padded in steps)
    assert {padded for _, _, padded in steps} <= {(t, s, 16, s) for t, s in llm.engine.backend.buckets.shapes()}
