"""Level 2: paged attention over ragged batches, on a NaN-poisoned cache (see paged.py for the hostility)."""

from __future__ import annotations

import torch

from unifer_conformance import grid
from unifer_conformance.case import Case, Result, Status, judge
from unifer_conformance.paged import Step, run_step
from unifer_conformance.tolerances import tolerance


def scenarios(bs: int) -> dict[str, dict]:
    """Batches as (cached context, new tokens) per sequence; seq_len = cached + new. Chosen so that sequences
    end exactly on a block boundary and one past it, and start at 1 token."""
    return {
        "decode": dict(seqs=[(0, 1), (2 * bs - 1, 1), (2 * bs, 1), (3 * bs + 4, 1), (bs - 2, 1)]),
        "prefill": dict(seqs=[(0, 1), (0, bs - 1), (0, bs), (0, bs + 1), (0, 3 * bs + 5)]),
        "mixed": dict(seqs=[(0, 2 * bs + 3), (5 * bs, 1), (bs, bs + 2), (0, 1), (3 * bs - 1, 1)]),
        "chunk": dict(seqs=[(4 * bs + 3, 2 * bs + 1), (bs, bs), (2 * bs - 1, 1)]),
        "prefix_hit": dict(seqs=[(3 * bs + 2, 5), (3 * bs + 7, 1)], share_prefix=True),
        "boundary_exact": dict(seqs=[(bs - 1, 1), (2 * bs - 5, 5), (0, bs), (3 * bs - 1, 1)]),
        "boundary_plus1": dict(seqs=[(bs, 1), (2 * bs - 4, 5), (0, bs + 1), (3 * bs, 1)]),
    }


def _case(step_kwargs: dict, dtype: str, perf_default: bool = False):
    def run(backend, config, seed) -> Result:
        gen = torch.Generator()
        gen.manual_seed(seed)
        step = Step(dtype=grid.torch_dtype(dtype), **step_kwargs)
        out, want, problems, perf = run_step(backend, step, gen, perf=config.perf or perf_default)
        if problems:
            return Result(Status.FAIL, "; ".join(problems), perf=perf)
        res = judge(out, want, tolerance("paged_attention", dtype))
        if res.status is Status.FAIL and res.max_abs_err != float("inf"):
            res.message += _where(out, want, step)
        res.perf = perf
        return res

    return run


def _where(out: torch.Tensor, want: torch.Tensor, step: Step) -> str:
    """Name the sequences and heads that are wrong: the pattern points at the bug (one head group: GQA mapping;
    long sequences only: window or length handling)."""
    err = (out.double().cpu() - want).abs().amax(dim=-1)  # [tokens, heads]
    start, bad_seqs = 0, []
    for i, (c, n) in enumerate(step.seqs):
        if err[start:start + n].max() > 0:
            bad_seqs.append(f"{i}(len {c + n})")
        start += n
    heads = (err.amax(dim=0) > err.amax() * 0.1).nonzero().flatten().tolist()
    return f"; largest errors in sequences {', '.join(bad_seqs[:6])}, heads {heads[:8]}"


def cases(backend) -> list[Case]:
    caps = backend.capabilities
    out: list[Case] = []
    hd0, bs0 = grid.default_head_size(backend), grid.default_block_size(backend)
    g0 = 2 if caps.max_gqa_ratio >= 2 else 1

    def add(cid, dtype, hd, bs, ratio, kv_heads=2, sw=None, cap=None, q_scale=1.0, **scenario):
        why = grid.undeclared(backend, dtype=dtype, head_size=hd, block_size=bs, gqa_ratio=ratio,
                              sliding_window=bool(sw), soft_cap=bool(cap))
        kwargs = dict(q_heads=kv_heads * ratio, kv_heads=kv_heads, head_size=hd, block_size=bs,
                      sliding_window=sw, soft_cap=cap, q_scale=q_scale, **scenario)
        params = dict(dtype=dtype, **{k: v for k, v in kwargs.items()})
        out.append(Case(cid, "attention", None if why else _case(kwargs, dtype), params, why))

    for dtype in grid.dtypes(backend):
        # The capability sweep: every head size x block size of the grid, one ragged mixed batch each.
        for hd in grid.head_sizes(backend):
            for bs in grid.block_sizes(backend):
                add(f"attention/mixed/{dtype}/h{hd}/b{bs}/g{g0}", dtype, hd, bs, g0, **scenarios(bs)["mixed"])
        # Every batch shape at the default head and block size.
        for name, sc in scenarios(bs0).items():
            if name != "mixed":
                add(f"attention/{name}/{dtype}/h{hd0}/b{bs0}/g{g0}", dtype, hd0, bs0, g0, **sc)
        # GQA ratios: 2 KV heads so that a wrong query-head -> KV-head mapping reads the other head.
        for ratio in grid.GQA_RATIOS:
            if ratio != g0:
                add(f"attention/mixed/{dtype}/h{hd0}/b{bs0}/g{ratio}", dtype, hd0, bs0, ratio,
                    **scenarios(bs0)["mixed"])
        # Sliding window shorter than most sequences; soft-cap with scores scaled into its non-linear range.
        sw = 2 * bs0 + 3
        win = dict(seqs=[(5 * bs0, 1), (0, 4 * bs0 + 1), (3 * bs0, 2 * bs0), (bs0, 2)])
        add(f"attention/sliding_window/{dtype}/h{hd0}/b{bs0}/g{g0}/w{sw}", dtype, hd0, bs0, g0, sw=sw, **win)
        add(f"attention/soft_cap/{dtype}/h{hd0}/b{bs0}/g{g0}/cap8", dtype, hd0, bs0, g0, cap=8.0, q_scale=4.0,
            **scenarios(bs0)["mixed"])
        add(f"attention/window_soft_cap/{dtype}/h{hd0}/b{bs0}/g{g0}/w{sw}/cap8", dtype, hd0, bs0, g0, sw=sw,
            cap=8.0, q_scale=4.0, **win)
        # Long contexts (thousands of tokens), few heads to stay fast on a CPU.
        add(f"attention/long_decode/{dtype}/h{hd0}/b{bs0}/g{g0}", dtype, hd0, bs0, g0, kv_heads=1,
            seqs=[(4093, 1), (2 * bs0 * 60, 1), (17, 1)])
        add(f"attention/long_chunk/{dtype}/h{hd0}/b{bs0}/g{g0}", dtype, hd0, bs0, g0, kv_heads=1,
            seqs=[(3000, 97), (5, 1)])
    return out
