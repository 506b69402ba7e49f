"""SamplingParams validation and the Sampler pipeline against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from unifer.ops.table import resolve_ops
from unifer.sample.params import SamplingParams
from unifer.sample.sampler import Sampler, SamplingState

VOCAB = 64


@pytest.fixture
def sampler() -> Sampler:
    return Sampler(resolve_ops({}))


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def state(params: SamplingParams, prompt=(1, 2, 3), output=(), seed: int | None = None) -> SamplingState:
    return SamplingState(params, list(prompt), list(output), gen(seed) if seed is not None else None)


# params ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("n", 0), ("max_tokens", 0), ("temperature", -0.1), ("top_k", -2), ("top_p", 0.0), ("top_p", 1.5),
    ("min_p", -0.1), ("min_p", 1.1), ("logprobs", 21), ("logprobs", -1), ("presence_penalty", 2.5),
    ("frequency_penalty", -3.0), ("repetition_penalty", 0.0), ("stop", [""]), ("stop", ""),
    ("stop_token_ids", ["x"]), ("bogus", 1), ("logit_bias", {3: 100.5}), ("logit_bias", {3: float("nan")}),
    ("logit_bias", {-1: 1.0}),
])
def test_invalid_params_name_the_field(field, value):
    with pytest.raises(ValidationError) as info:
        SamplingParams(**{field: value})
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


def test_params_defaults_and_normalisation():
    p = SamplingParams()
    assert (p.n, p.max_tokens, p.temperature, p.top_k, p.top_p, p.min_p) == (1, 16, 1.0, 0, 1.0, 0.0)
    assert p.stop is None and p.stop_token_ids == [] and not p.greedy
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=["a", "b"]).stop == ["a", "b"]
    assert SamplingParams(max_tokens=None).max_tokens is None
    assert SamplingParams(temperature=0).greedy and SamplingParams(top_k=1).greedy
    assert not SamplingParams(top_k=-1).greedy


# greedy ------------------------------------------------------------------------------------------------------------
def test_greedy_is_argmax(sampler):
    logits = torch.randn(5, VOCAB, generator=gen(0))
    out = sampler(logits, [state(SamplingParams(temperature=0)) for _ in range(5)])
    assert out.token_ids == logits.argmax(-1).tolist()
    assert out.logprobs == [None] * 5


def test_greedy_rows_in_a_mixed_batch_are_argmax(sampler):
    logits = torch.randn(4, VOCAB, generator=gen(1))
    batch = [state(SamplingParams(temperature=0)), state(SamplingParams(temperature=1.0), seed=3),
             state(SamplingParams(top_k=1, temperature=0.7)), state(SamplingParams(top_p=0.5), seed=4)]
    out = sampler(logits, batch)
    argmax = logits.argmax(-1).tolist()
    assert out.token_ids[0] == argmax[0] and out.token_ids[2] == argmax[2]


# seeds -------------------------------------------------------------------------------------------------------------
def test_seeded_rows_reproducible_regardless_of_batch(sampler):
    torch.manual_seed(123)
    row = torch.randn(VOCAB, generator=gen(5))
    params = SamplingParams(temperature=1.3, top_p=0.9, top_k=40)

    def draw(position: int, batch_size: int, others_seed: int) -> list[int]:
        g = gen(77)
        tokens = []
        for _ in range(20):
            logits = torch.randn(batch_size, VOCAB, generator=gen(others_seed))
            logits[position] = row
            batch = [state(SamplingParams(temperature=0.8), seed=others_seed + i) if i % 2 else
                     state(SamplingParams(temperature=1.0)) for i in range(batch_size)]
            batch[position] = SamplingState(params, [1, 2], [], g)
            tokens.append(sampler(logits, batch).token_ids[position])
        return tokens

    alone = draw(0, 1, 0)
    assert draw(0, 1, 0) == alone
    assert draw(2, 5, 9) == alone
    assert draw(4, 5, 11) == alone
    assert len(set(alone)) > 1  # really sampling


# masks -------------------------------------------------------------------------------------------------------------
def _support(sampler, logits_row, params, draws=400) -> set[int]:
    logits = logits_row.expand(draws, -1).clone()
    out = sampler(logits, [state(params, seed=i) for i in range(draws)])
    return set(out.token_ids)


def test_top_k_top_p_min_p_masks_exact():
    probs = torch.tensor([[0.4, 0.3, 0.15, 0.1, 0.05]])
    logits = probs.log()
    ops = resolve_ops({})

    def kept(**kw) -> list[int]:
        args = dict(top_k=torch.tensor([0]), top_p=torch.tensor([1.0]), min_p=torch.tensor([0.0]))
        args.update({k: torch.tensor([v]) for k, v in kw.items()})
        masked = ops.apply_top_k_top_p_min_p(logits.clone(), **args)
        return torch.isfinite(masked[0]).nonzero().flatten().tolist()

    assert kept(top_k=2) == [0, 1]
    assert kept(top_k=5) == [0, 1, 2, 3, 4]
    assert kept(top_p=0.7) == [0, 1]  # 0.4 + 0.3 reaches 0.7
    assert kept(top_p=0.71) == [0, 1, 2]
    assert kept(top_p=0.1) == [0]
    assert kept(min_p=0.5) == [0, 1]  # threshold 0.2
    assert kept(min_p=0.25) == [0, 1, 2, 3]  # threshold 0.1 keeps 0.1
    assert kept(top_k=3, min_p=0.5) == [0, 1]


def test_sampler_respects_masks(sampler):
    logits = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05]).log()
    assert _support(sampler, logits, SamplingParams(top_k=2)) == {0, 1}
    assert _support(sampler, logits, SamplingParams(top_p=0.7)) == {0, 1}
    assert _support(sampler, logits, SamplingParams(min_p=0.4)) == {0, 1}  # threshold 0.16
    assert _support(sampler, logits, SamplingParams()) == {0, 1, 2, 3, 4}


# penalties ---------------------------------------------------------------------------------------------------------
def test_penalties_match_direct_computation(sampler):
    logits = torch.randn(3, VOCAB, generator=gen(2)) * 3
    prompts = [[1, 2, 2, 9], [5], [7, 8]]
    outputs = [[2, 3, 3, 3, 10], [], [8, 8, 11]]
    params = [SamplingParams(temperature=0, presence_penalty=0.5, frequency_penalty=0.3, repetition_penalty=1.2),
              SamplingParams(temperature=0),
              SamplingParams(temperature=0, repetition_penalty=0.7, frequency_penalty=-1.0)]
    expected = logits.clone()
    for b, p in enumerate(params):
        seen = set(prompts[b]) | set(outputs[b])
        for t in seen:
            x = expected[b, t]
            expected[b, t] = x / p.repetition_penalty if x > 0 else x * p.repetition_penalty
        for t in set(outputs[b]):
            expected[b, t] -= p.frequency_penalty * outputs[b].count(t) + p.presence_penalty

    captured = {}
    ops = resolve_ops({})

    def spy(*args, **kwargs):
        captured["out"] = ops.apply_penalties(*args, **kwargs)
        return captured["out"]

    spying = Sampler(resolve_ops({"apply_penalties": spy}))
    batch = [state(p, prompt, output) for p, prompt, output in zip(params, prompts, outputs, strict=True)]
    out = spying(logits, batch)
    torch.testing.assert_close(captured["out"], expected)
    assert out.token_ids == expected.argmax(-1).tolist()


def test_no_penalty_op_when_unused():
    def boom(*args, **kwargs):
        raise AssertionError("apply_penalties called without penalties")

    s = Sampler(resolve_ops({"apply_penalties": boom, "apply_top_k_top_p_min_p": boom}))
    logits = torch.randn(3, VOCAB)
    s(logits, [state(SamplingParams(temperature=0)) for _ in range(3)])
    s(logits, [state(SamplingParams(temperature=0.5), seed=i) for i in range(3)])


# temperature sampling ----------------------------------------------------------------------------------------------
CHI2_CRIT_P001 = {7: 24.322, 9: 27.877}  # chi-square critical values at significance 0.001


@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.7])
def test_temperature_sampling_frequencies_match_softmax(sampler, temperature):
    vocab, draws = 8, 20000
    row = torch.tensor([1.0, 0.5, 0.0, -0.5, 2.0, 0.2, -1.0, 0.8])
    logits = row.expand(draws, vocab).clone()
    g = gen(2024)
    batch = [SamplingState(SamplingParams(temperature=temperature), [1], [], g) for _ in range(draws)]
    counts = torch.bincount(torch.tensor(sampler(logits, batch).token_ids), minlength=vocab).double()
    expected = torch.softmax(row.double() / temperature, -1) * draws
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_CRIT_P001[vocab - 1], (chi2, counts.tolist(), expected.tolist())


# logit bias --------------------------------------------------------------------------------------------------------
def test_logit_bias_added_before_penalties_and_argmax(sampler):
    logits = torch.randn(3, VOCAB, generator=gen(6))
    biases = [{int(logits[0].argmin()): 100.0}, {}, {int(logits[2].argmax()): -100.0, 7: 0.5}]
    params = [SamplingParams(temperature=0, logit_bias=b) for b in biases]
    params[1] = SamplingParams(temperature=0, repetition_penalty=1.3, logprobs=1)
    outputs = [[], [int(logits[1].argmax())], []]
    out = sampler(logits, [state(p, output=o) for p, o in zip(params, outputs, strict=True)])
    expected = logits.clone()
    for row, bias in enumerate(biases):
        for token, value in bias.items():
            expected[row, token] += value
    seen = int(logits[1].argmax())
    x = expected[1, seen]
    expected[1, seen] = x / 1.3 if x > 0 else x * 1.3
    assert out.token_ids == expected.argmax(-1).tolist()
    assert out.token_ids[0] == int(logits[0].argmin()) and out.token_ids[2] != int(logits[2].argmax())


def test_logit_bias_bans_and_forces_sampled_tokens(sampler):
    row = torch.zeros(VOCAB)  # uniform: every token is as likely as the others
    banned = {t: -100.0 for t in range(VOCAB // 2)}
    assert _support(sampler, row, SamplingParams(logit_bias=banned)) == set(range(VOCAB // 2, VOCAB))
    assert _support(sampler, row, SamplingParams(temperature=1.5, logit_bias={9: 100.0})) == {9}
    # logprobs stay those of the raw logits, as without the bias
    out = sampler(row[None].clone(), [state(SamplingParams(temperature=0, logit_bias={9: 100.0}, logprobs=0))])
    assert out.token_ids == [9] and math.isclose(out.logprobs[0][9], -math.log(VOCAB), rel_tol=1e-5)


# logprobs ----------------------------------------------------------------------------------------------------------
def test_logprobs_from_raw_logits(sampler):
    logits = torch.randn(3, VOCAB, generator=gen(3))
    params = [SamplingParams(temperature=0, logprobs=3, repetition_penalty=1.5),
              SamplingParams(temperature=0.9, logprobs=0, seed=1),
              SamplingParams(temperature=0)]
    batch = [state(params[0], output=[5, 6]), state(params[1], seed=1), state(params[2])]
    out = sampler(logits, batch)
    raw = torch.log_softmax(logits, -1)
    top3 = raw[0].topk(3)
    lp0 = out.logprobs[0]
    for i, v in zip(top3.indices.tolist(), top3.values.tolist(), strict=True):
        assert math.isclose(lp0[i], v, rel_tol=1e-5, abs_tol=1e-6)
    assert out.token_ids[0] in lp0 and len(lp0) in (3, 4)
    assert list(out.logprobs[1]) == [out.token_ids[1]]
    assert math.isclose(out.logprobs[1][out.token_ids[1]], raw[1, out.token_ids[1]].item(), rel_tol=1e-5)
    assert out.logprobs[2] is None
    assert out.sampled_logprob[2] is None
