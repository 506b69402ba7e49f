"""Level 3: sampling. Greedy = argmax; top-k / top-p / min-p masks exact; seeded draws reproducible across calls
and batch positions; sampled frequencies match the target distribution (chi-square at a fixed significance).

Mask thresholds are placed midway between two neighbouring float64 values (cumulative mass for top-p, probability
ratio for min-p), so the exact answer is unambiguous for any correct float32 implementation.
"""

from __future__ import annotations

import torch

from unifer_conformance.buffers import randn
from unifer_conformance.case import Case, Result, Status
from unifer_conformance.tolerances import CHI_SQUARE_ALPHA


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _choose(logits: torch.Tensor, kind: str, g: torch.Generator) -> tuple[int, float, float]:
    """(top_k, top_p, min_p) for one float64 row, thresholds between two well-separated neighbours."""
    srt = logits.sort(descending=True).values
    top_k = 0
    if kind in ("top_k", "combined"):
        top_k = int(torch.randint(2, min(60, len(srt) - 2), (1,), generator=g))
    kept = srt[:top_k] if top_k else srt
    probs = torch.softmax(kept, dim=-1)
    top_p, min_p = 1.0, 0.0
    if kind in ("top_p", "combined"):
        before = probs.cumsum(0) - probs  # keep rank r while before[r] < top_p
        hi = min(len(kept) - 1, 40)
        j = int(torch.randint(1, hi, (1,), generator=g))  # keep exactly j tokens
        top_p = float((before[j - 1] + before[j]) / 2)
        probs = probs[:j]
    if kind in ("min_p", "combined"):
        ratio = probs / probs[0]  # keep rank r while ratio[r] >= min_p
        hi = min(len(ratio) - 1, 30)
        if hi >= 1:
            j = int(torch.randint(1, hi + 1, (1,), generator=g))
            min_p = float((ratio[j - 1] + ratio[j]) / 2) if j < len(ratio) else float(ratio[-1] / 2)
    return top_k, top_p, min_p


def _mask_case(kind: str, vocab: int, rows: int = 6):
    def run(backend, config, seed):
        from unifer.ops import reference

        dev, g = backend.device(), _gen(seed)
        logits = randn((rows, vocab), torch.float32, "cpu", g, scale=2.5)
        ks, ps, ms = [], [], []
        for r in range(rows):
            k, p, m = _choose(logits[r].double(), kind, g)
            ks.append(k), ps.append(p), ms.append(m)
        ks[-1] = 1 if kind == "top_k" else ks[-1]  # top-k = 1 is greedy: exactly the argmax survives
        top_k = torch.tensor(ks, dtype=torch.int64)
        top_p = torch.tensor(ps, dtype=torch.float32)
        min_p = torch.tensor(ms, dtype=torch.float32)
        got = backend.ops.apply_top_k_top_p_min_p(logits.to(dev), top_k=top_k.to(dev), top_p=top_p.to(dev),
                                                  min_p=min_p.to(dev)).cpu()
        want = reference.apply_top_k_top_p_min_p(logits.double(), top_k=top_k, top_p=top_p.double(),
                                                 min_p=min_p.double())
        keep_got, keep_want = torch.isfinite(got), torch.isfinite(want)
        if not torch.equal(keep_got, keep_want):
            diffs = []
            for r in range(rows):
                n_got, n_want = int(keep_got[r].sum()), int(keep_want[r].sum())
                if n_got != n_want or not torch.equal(keep_got[r], keep_want[r]):
                    diffs.append(f"row {r} (top_k {ks[r]}, top_p {ps[r]:.4f}, min_p {ms[r]:.4f}): kept {n_got} "
                                 f"tokens, expected {n_want}")
            return Result(Status.FAIL, "mask differs: " + "; ".join(diffs[:3]))
        if not torch.equal(got[keep_got], logits[keep_got]):
            return Result(Status.FAIL, "kept logits were changed (the op must only mask)")
        if (got[~keep_got] != float("-inf")).any():
            return Result(Status.FAIL, "masked logits must be -inf")
        return Result(Status.PASS, f"kept per row: {keep_got.sum(1).tolist()}")

    return run


def _greedy(vocab: int, rows: int = 8):
    """The engine's sampler over the backend's ops: greedy rows give the float64 argmax, including when they share
    the batch with sampled rows, and a row with penalties gives the argmax of the float64 penalised logits."""

    def run(backend, config, seed):
        from unifer.ops import reference
        from unifer.sample.params import SamplingParams
        from unifer.sample.sampler import Sampler, SamplingState

        dev, g = backend.device(), _gen(seed)
        logits = randn((rows, vocab), torch.float32, "cpu", g, scale=3.0)
        states = []
        for r in range(rows):
            if r % 3 == 2:  # a sampled row in between: greedy rows must not depend on it
                p = SamplingParams(temperature=0.9, top_p=0.8, seed=r)
            elif r % 3 == 1:
                p = SamplingParams(temperature=0.0, repetition_penalty=1.3, presence_penalty=0.5)
            else:
                p = SamplingParams(temperature=0.0)
            prompt = torch.randint(0, vocab, (5,), generator=g).tolist()
            states.append(SamplingState(p, prompt, [int(logits[r].argmax())], backend.make_generator(r)))
        tokens = Sampler(backend.ops)(logits.to(dev), states).token_ids
        wrong = []
        for r, s in enumerate(states):
            if not s.params.greedy:
                continue
            row = logits[r : r + 1].double()
            if s.params.uses_penalties:
                prompt_mask = torch.zeros_like(row, dtype=torch.bool)
                prompt_mask[0, s.prompt_token_ids] = True
                counts = torch.zeros_like(row, dtype=torch.int32)
                counts[0, s.output_token_ids] = 1
                row = reference.apply_penalties(
                    row, prompt_mask, counts, presence=torch.tensor([s.params.presence_penalty]).double(),
                    frequency=torch.tensor([0.0]).double(), repetition=torch.tensor([1.3]).double())
            want = int(row.argmax())
            if tokens[r] != want:
                wrong.append(f"row {r}: {tokens[r]} != argmax {want}")
        return Result(Status.FAIL, "; ".join(wrong)) if wrong else Result(Status.PASS)

    return run


def _seeded(vocab: int):
    """A seeded row draws the same tokens on every call and at any position of any batch."""

    def run(backend, config, seed):
        dev, g = backend.device(), _gen(seed)
        probs = torch.softmax(randn((6, vocab), torch.float32, "cpu", g, scale=1.5), dim=-1).to(dev)

        def draws(order: list[int], seeds: list[int | None], n: int = 16) -> list[list[int]]:
            gens = [backend.make_generator(s) if s is not None else None for s in seeds]
            out = []
            for _ in range(n):
                out.append(backend.ops.random_sample(probs[order], gens).tolist())
            return out

        base = draws([0, 1, 2, 3, 4, 5], [seed + 1, None, seed + 3, seed + 4, None, seed + 6])
        again = draws([0, 1, 2, 3, 4, 5], [seed + 1, None, seed + 3, seed + 4, None, seed + 6])
        moved = draws([4, 3, 5, 1, 2, 0], [None, seed + 4, seed + 6, None, seed + 3, seed + 1])
        alone = draws([2], [seed + 3])
        col = lambda d, i: [step[i] for step in d]  # noqa: E731
        problems = []
        for row, pos_moved in ((0, 5), (2, 4), (3, 1), (5, 2)):
            if col(base, row) != col(again, row):
                problems.append(f"row {row}: a second call with the same seed drew different tokens")
            if col(base, row) != col(moved, pos_moved):
                problems.append(f"row {row}: moved to batch position {pos_moved}, it drew different tokens")
        if col(base, 2) != col(alone, 0):
            problems.append("row 2: alone in its batch it drew different tokens")
        if len(set(col(base, 0))) < 2:
            problems.append("row 0: 16 seeded draws from a spread distribution were all equal (not random)")
        return Result(Status.FAIL, "; ".join(problems)) if problems else Result(Status.PASS)

    return run


def _chi_square(kind: str, vocab: int = 24, draws: int = 24000):
    """Frequencies of the backend's mask -> softmax -> draw pipeline against the exact float64 target."""

    def run(backend, config, seed):
        from unifer.ops import reference

        dev, g = backend.device(), _gen(seed)
        logits = randn((1, vocab), torch.float32, "cpu", g, scale=1.2)
        k, p, m = _choose(logits[0].double(), kind, g) if kind != "plain" else (0, 1.0, 0.0)
        kw_dev = dict(top_k=torch.tensor([k], device=dev), top_p=torch.tensor([p], device=dev),
                      min_p=torch.tensor([m], device=dev))
        masked = backend.ops.apply_top_k_top_p_min_p(logits.to(dev), **kw_dev) if kind != "plain" else logits.to(dev)
        probs = torch.softmax(masked.float(), dim=-1).expand(draws, vocab).contiguous()
        backend.seed(seed)
        tokens = backend.ops.random_sample(probs, [None] * draws).cpu()
        counts = torch.bincount(tokens.long(), minlength=vocab).double()
        target = reference.apply_top_k_top_p_min_p(
            logits.double(), top_k=torch.tensor([k]), top_p=torch.tensor([p]).double(),
            min_p=torch.tensor([m]).double())
        expected = torch.softmax(target[0], dim=-1) * draws
        impossible = (expected == 0) & (counts > 0)
        if impossible.any():
            ids = impossible.nonzero().flatten().tolist()
            return Result(Status.FAIL, f"drew tokens {ids} ({int(counts[impossible].sum())} times) that the "
                                       f"target gives zero probability (top_k {k}, top_p {p:.4f}, min_p {m:.4f})")
        live = expected > 0
        chi2 = float(((counts[live] - expected[live]) ** 2 / expected[live]).sum())
        df = int(live.sum()) - 1
        if df == 0:
            return Result(Status.PASS, "one possible token, always drawn")
        p_value = float(torch.special.gammaincc(torch.tensor(df / 2), torch.tensor(chi2 / 2)))
        msg = f"chi-square {chi2:.1f} on {df} degrees of freedom, p = {p_value:.3g} (alpha {CHI_SQUARE_ALPHA})"
        return Result(Status.PASS if p_value >= CHI_SQUARE_ALPHA else Status.FAIL, msg,
                      extra={"chi2": chi2, "df": df, "p_value": p_value})

    return run


def cases(backend) -> list[Case]:
    out = []
    for vocab in (1000, 32000, 151936):
        out.append(Case(f"sampling/greedy/v{vocab}", "sampling", _greedy(vocab), dict(vocab=vocab)))
    for kind in ("top_k", "top_p", "min_p", "combined"):
        for vocab in (1000, 32000):
            out.append(Case(f"sampling/mask/{kind}/v{vocab}", "sampling", _mask_case(kind, vocab),
                            dict(kind=kind, vocab=vocab)))
    for vocab in (7, 32000):
        out.append(Case(f"sampling/seeded/v{vocab}", "sampling", _seeded(vocab), dict(vocab=vocab)))
    for kind in ("plain", "top_k", "top_p", "min_p", "combined"):
        out.append(Case(f"sampling/chi_square/{kind}", "sampling", _chi_square(kind),
                        dict(kind=kind, vocab=24, draws=24000, alpha=CHI_SQUARE_ALPHA)))
    return out
