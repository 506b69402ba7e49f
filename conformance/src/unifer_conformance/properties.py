"""Property-based random shapes (hypothesis) on top of the fixed grid, biased to boundaries.

Each property case runs ``SuiteConfig.property_examples`` examples from the case's seed (printed in the report),
so a rerun with the same ``--seed`` draws the same shapes; a failure is shrunk by hypothesis to a minimal example
whose parameters the result message spells out.
"""

from __future__ import annotations

import torch

from unifer_conformance import grid
from unifer_conformance.case import Case, Result, Status, judge
from unifer_conformance.tolerances import tolerance


def _boundary(st, bs: int, hi: int):
    """Lengths near block and power-of-two boundaries, mixed with uniform ones."""
    edges = sorted({v for v in (0, 1, 2, bs - 1, bs, bs + 1, 2 * bs - 1, 2 * bs, 2 * bs + 1, 31, 32, 33, 63, 64, 65,
                                127, 128, 129, 255, 256, 257) if 0 <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(0, hi))


def _run_property(strategy, check, seed: int, examples: int) -> Result:
    """Run ``check(example) -> Result`` over hypothesis examples; report the shrunk failing example."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hyp_seed

    failing: list[tuple[dict, Result]] = []
    ran = [0]

    @hyp_seed(seed)
    @settings(max_examples=examples, database=None, deadline=None, derandomize=False, print_blob=False,
              suppress_health_check=list(HealthCheck), phases=(Phase.generate, Phase.shrink))
    @given(strategy)
    def prop(example):
        ran[0] += 1
        res = check(example)
        if res.status is not Status.PASS:
            failing.append((example, res))
            raise AssertionError(res.message)

    try:
        prop()
    except AssertionError:
        example, res = failing[-1]  # hypothesis replays the shrunk example last
        res.message = f"shrunk to {example}: {res.message}"
        res.extra = {"example": {k: repr(v) for k, v in example.items()}}
        return res
    return Result(Status.PASS, f"{ran[0]} random examples")


def attention_cases(backend) -> list[Case]:
    from hypothesis import strategies as st

    caps = backend.capabilities
    ratios = [r for r in (1, 2, 3, 4, 8) if r <= caps.max_gqa_ratio]

    @st.composite
    def examples(draw):
        bs = draw(st.sampled_from(caps.block_sizes))
        length = _boundary(st, bs, 300)
        n = draw(st.integers(1, 5))
        seqs = [(draw(length), max(1, draw(length) // 4)) for _ in range(n)]
        return dict(
            dtype=draw(st.sampled_from(caps.dtypes)), head_size=draw(st.sampled_from(caps.head_sizes)),
            block_size=bs, kv_heads=draw(st.sampled_from((1, 2))), ratio=draw(st.sampled_from(ratios)), seqs=seqs,
            sliding_window=draw(st.one_of(st.none(), st.integers(1, 200))) if caps.sliding_window else None,
            soft_cap=draw(st.sampled_from((None, 5.0))) if caps.logit_soft_cap else None)

    def check(ex) -> Result:
        from unifer_conformance.paged import Step, run_step

        step = Step(seqs=ex["seqs"], q_heads=ex["kv_heads"] * ex["ratio"], kv_heads=ex["kv_heads"],
                    head_size=ex["head_size"], block_size=ex["block_size"], dtype=grid.torch_dtype(ex["dtype"]),
                    sliding_window=ex["sliding_window"], soft_cap=ex["soft_cap"],
                    q_scale=3.0 if ex["soft_cap"] else 1.0)
        gen = torch.Generator()
        gen.manual_seed(len(str(ex)))
        out, want, problems, _ = run_step(backend, step, gen)
        if problems:
            return Result(Status.FAIL, "; ".join(problems))
        return judge(out, want, tolerance("paged_attention", ex["dtype"]))

    def run(backend_, config, seed):
        return _run_property(examples(), check, seed, config.property_examples)

    return [Case("property/attention/random_shapes", "attention", run, dict(strategy="boundary-biased ragged"))]


def ops_cases(backend) -> list[Case]:
    from hypothesis import strategies as st

    caps = backend.capabilities

    @st.composite
    def examples(draw):
        return dict(dtype=draw(st.sampled_from(caps.dtypes)), head_size=draw(st.sampled_from(caps.head_sizes)),
                    tokens=draw(st.sampled_from((1, 2, 3, 15, 16, 17, 63, 65)) | st.integers(1, 200)),
                    hidden=draw(st.sampled_from((1, 7, 31, 33, 127, 129, 1023, 1025)) | st.integers(1, 3000)),
                    max_position=draw(st.sampled_from((1, 511, 512, 513, 4097, 8192))))

    def check(ex) -> Result:
        from unifer.ops import reference

        from unifer_conformance.buffers import randn
        from unifer_conformance.level_ops import rope_cache

        g = torch.Generator()
        g.manual_seed(len(str(ex)))
        dev, dt, d = backend.device(), grid.torch_dtype(ex["dtype"]), ex["dtype"]
        x = randn((ex["tokens"], ex["hidden"]), dt, dev, g)
        w = randn((ex["hidden"],), dt, dev, g)
        res = judge(backend.ops.rms_norm(x, w, 1e-6), reference.rms_norm(x.double(), w.double(), 1e-6),
                    tolerance("rms_norm", d), "rms_norm")
        if res.status is not Status.PASS:
            return res
        x2 = randn((ex["tokens"], 2 * ex["hidden"]), dt, dev, g)
        res = judge(backend.ops.silu_and_mul(x2), reference.silu_and_mul(x2.double()), tolerance("silu_and_mul", d),
                    "silu_and_mul")
        if res.status is not Status.PASS:
            return res
        hd = ex["head_size"]
        pos = torch.randint(0, ex["max_position"], (ex["tokens"],), generator=g)
        q, k = randn((ex["tokens"], 2, hd), dt, dev, g), randn((ex["tokens"], 1, hd), dt, dev, g)
        cache = rope_cache(hd)
        gq, gk = backend.ops.rotary_embedding(pos.to(dev), q, k, cache.to(dev))
        wq, wk = reference.rotary_embedding(pos, q.double().cpu(), k.double().cpu(), cache.double())
        res = judge(torch.cat([gq.flatten(), gk.flatten()]), torch.cat([wq.flatten(), wk.flatten()]),
                    tolerance("rotary_embedding", d), "rotary_embedding")
        return res

    def run(backend_, config, seed):
        return _run_property(examples(), check, seed, config.property_examples)

    return [Case("property/ops/random_shapes", "ops", run, dict(strategy="boundary-biased"))]
