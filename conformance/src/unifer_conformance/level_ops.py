"""Level 1: every element-wise / reduction op of the contract against ``unifer.ops.reference`` in float64.

Inputs are fresh unit-normal values from the case's seed, placed inside NaN guard regions (an out-of-bounds read
turns the output non-finite; an out-of-bounds or in-place write breaks a guard or changes an input).
"""

from __future__ import annotations

import torch

from unifer_conformance import grid
from unifer_conformance.buffers import Guarded, randn, same_bits
from unifer_conformance.case import Case, Result, Status, judge, worst
from unifer_conformance.tolerances import tolerance

ROPE_MAX_POSITIONS = 8192


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _untouched(guarded: list[Guarded], before: list[torch.Tensor]) -> Result | None:
    for i, (g, b) in enumerate(zip(guarded, before, strict=True)):
        if not g.guards_intact():
            return Result(Status.FAIL, f"input {i}: a NaN guard region around it was overwritten "
                                       "(out-of-bounds write)")
        if not same_bits(g.tensor, b):
            return Result(Status.FAIL, f"input {i} was modified in place (ops must not write their inputs)")
    return None


def _call(backend, name: str, *tensors: torch.Tensor, **kwargs):
    """Run the backend's op on guarded copies; returns (output, problem-or-None)."""
    guarded = [Guarded(t) for t in tensors]
    before = [t.detach().clone() for t in tensors]
    out = getattr(backend.ops, name)(*[g.tensor for g in guarded], **kwargs)
    backend.synchronize()
    return out, _untouched(guarded, before)


def rope_cache(head_dim: int, max_positions: int = ROPE_MAX_POSITIONS, theta: float = 10000.0) -> torch.Tensor:
    """[positions, head_dim] float32: cos in the first half, sin in the second (the contract's layout), computed
    here in float64 so the table itself is exact to float32 rounding."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(torch.float32)


# --- the ops ---------------------------------------------------------------------------------------------------
def _rms_norm(tokens: int, hidden: int, dtype: str, residual: bool):
    def run(backend, config, seed):
        from unifer.ops import reference

        dev, dt, g = backend.device(), grid.torch_dtype(dtype), _gen(seed)
        x = randn((tokens, hidden), dt, dev, g)
        w = randn((hidden,), dt, dev, g, scale=0.5) + 1.0
        r = randn((tokens, hidden), dt, dev, g) if residual else None
        eps = 1e-6
        args = (x, w) + ((r,) if residual else ())
        if residual:
            fn = lambda xx, ww, rr: backend.ops.rms_norm(xx, ww, eps, residual=rr)  # noqa: E731
            out, problem = _call_fn(backend, fn, *args)
            want = reference.rms_norm(x.double(), w.double(), eps, residual=r.double())
        else:
            out, problem = _call_fn(backend, lambda xx, ww: backend.ops.rms_norm(xx, ww, eps), x, w)
            want = reference.rms_norm(x.double(), w.double(), eps)
        if problem:
            return problem
        tol = tolerance("rms_norm", dtype)
        if residual:
            if not isinstance(out, tuple) or len(out) != 2:
                return Result(Status.FAIL, "rms_norm with residual must return (normed, x + residual)")
            return worst([judge(out[0], want[0], tol, "normed"), judge(out[1], want[1], tol, "residual sum")])
        return judge(out, want, tol)

    return run


def _call_fn(backend, fn, *tensors):
    guarded = [Guarded(t) for t in tensors]
    before = [t.detach().clone() for t in tensors]
    out = fn(*[g.tensor for g in guarded])
    backend.synchronize()
    return out, _untouched(guarded, before)


def _rotary(tokens: int, head_dim: int, dtype: str, max_pos: int):
    def run(backend, config, seed):
        from unifer.ops import reference

        dev, dt, g = backend.device(), grid.torch_dtype(dtype), _gen(seed)
        heads, kv_heads = 4, 2
        # Random positions plus the edges: 0, the last position, and around 2^n boundaries below max_pos.
        edges = [p for p in (0, 1, 255, 256, 511, 512, 513, 1023, 1024, 4095, 4096, max_pos - 1) if p < max_pos]
        rand = torch.randint(0, max_pos, (tokens - len(edges),), generator=g)
        positions = torch.cat([torch.tensor(edges), rand])[torch.randperm(tokens, generator=g)].to(dev)
        q = randn((tokens, heads, head_dim), dt, dev, g)
        k = randn((tokens, kv_heads, head_dim), dt, dev, g)
        cache = rope_cache(head_dim).to(dev)
        fn = lambda qq, kk: backend.ops.rotary_embedding(positions, qq, kk, cache)  # noqa: E731
        out, problem = _call_fn(backend, fn, q, k)
        if problem:
            return problem
        want_q, want_k = reference.rotary_embedding(positions.cpu(), q.double().cpu(), k.double().cpu(),
                                                    cache.double().cpu())
        tol = tolerance("rotary_embedding", dtype)
        res = worst([judge(out[0], want_q, tol, "query"), judge(out[1], want_k, tol, "key")])
        if res.status is Status.FAIL:  # name the first wrong position: it tells a vendor which range is broken
            bad = ((out[0].double().cpu() - want_q).abs().amax(dim=(1, 2)) > tol.max_abs).nonzero().flatten()
            if len(bad):
                res.message += f"; wrong at positions e.g. {sorted(positions.cpu()[bad].tolist())[:5]}"
        return res

    return run


def _silu_and_mul(tokens: int, d: int, dtype: str):
    def run(backend, config, seed):
        from unifer.ops import reference

        dev, dt, g = backend.device(), grid.torch_dtype(dtype), _gen(seed)
        x = randn((tokens, 2 * d), dt, dev, g, scale=2.0)
        out, problem = _call(backend, "silu_and_mul", x)
        return problem or judge(out, reference.silu_and_mul(x.double()), tolerance("silu_and_mul", dtype))

    return run


def _penalties(rows: int, vocab: int):
    def run(backend, config, seed):
        from unifer.ops import reference

        dev, g = backend.device(), _gen(seed)
        logits = randn((rows, vocab), torch.float32, dev, g, scale=3.0)
        prompt_mask = (torch.rand((rows, vocab), generator=g) < 0.2).to(dev)
        counts = torch.randint(0, 4, (rows, vocab), generator=g, dtype=torch.int32)
        counts = torch.where(torch.rand((rows, vocab), generator=g) < 0.7, 0, counts).to(dev)
        presence = (torch.rand(rows, generator=g) * 2 - 0.5).to(dev)
        frequency = (torch.rand(rows, generator=g) - 0.3).to(dev)
        repetition = (torch.rand(rows, generator=g) + 0.7).to(dev)
        kw = dict(presence=presence, frequency=frequency, repetition=repetition)
        fn = lambda lg: backend.ops.apply_penalties(lg, prompt_mask, counts, **kw)  # noqa: E731
        out, problem = _call_fn(backend, fn, logits)
        if problem:
            return problem
        want = reference.apply_penalties(logits.double(), prompt_mask, counts,
                                         **{k: v.double() for k, v in kw.items()})
        return judge(out, want, tolerance("apply_penalties", "float32"))

    return run


def _write_kv(dtype: str, head_dim: int, block_size: int):
    """KV writes land exactly at the given slots (bit-exact copies), skip slot -1, and touch nothing else."""

    def run(backend, config, seed):
        dev, dt, g = backend.device(), grid.torch_dtype(dtype), _gen(seed)
        slot_mapping, _ = _prefill_slots(g, block_size, dev)
        tokens = len(slot_mapping)
        k = randn((tokens, KV_WRITE_HEADS, head_dim), dt, dev, g)
        v = randn((tokens, KV_WRITE_HEADS, head_dim), dt, dev, g)
        cache = _kv_cache(backend, block_size, head_dim, dt)
        backend.ops.write_kv(k, v, cache.tensor, slot_mapping)
        backend.synchronize()
        got = _written(cache, slot_mapping, block_size, "write_kv")
        if isinstance(got, Result):
            return got
        if got is None:
            return Result(Status.PASS, "custom cache layout: element count checked here; positions are checked "
                                       "through paged attention (level 2)")
        valid = slot_mapping >= 0
        got_k, got_v = got
        if not (same_bits(got_k, k[valid]) and same_bits(got_v, v[valid])):
            wrong = (got_k != k[valid]).flatten(1).any(1).nonzero().flatten().tolist()
            return Result(Status.FAIL, f"write_kv put tokens {wrong[:8]} at the wrong slots "
                                       f"(slots {slot_mapping[valid][wrong[:8]].tolist()})")
        return Result(Status.PASS, f"{int(valid.sum())} tokens at exact slots, {PADDING} padding tokens skipped")

    return run


def _rotary_write_kv(dtype: str, head_dim: int, block_size: int):
    """The fused op against its parts in float64: the rotated query, the rotated key and the exact value at the
    given slots (slot -1 skipped), nothing else written, inputs untouched."""

    def run(backend, config, seed):
        from unifer.ops import reference

        dev, dt, g = backend.device(), grid.torch_dtype(dtype), _gen(seed)
        slot_mapping, positions = _prefill_slots(g, block_size, dev)
        tokens = len(slot_mapping)
        q = randn((tokens, 4, head_dim), dt, dev, g)
        k = randn((tokens, KV_WRITE_HEADS, head_dim), dt, dev, g)
        v = randn((tokens, KV_WRITE_HEADS, head_dim), dt, dev, g)
        cos_sin = rope_cache(head_dim).to(dev)
        cache = _kv_cache(backend, block_size, head_dim, dt)
        fn = lambda qq, kk, vv: backend.ops.rotary_write_kv(  # noqa: E731
            positions, qq, kk, vv, cos_sin, cache.tensor, slot_mapping)
        out, problem = _call_fn(backend, fn, q, k, v)
        if problem:
            return problem
        got = _written(cache, slot_mapping, block_size, "rotary_write_kv")
        if isinstance(got, Result):
            return got
        want_q, want_k = reference.rotary_embedding(positions.cpu(), q.double().cpu(), k.double().cpu(),
                                                    cos_sin.double().cpu())
        tol = tolerance("rotary_embedding", dtype)
        checks = [judge(out, want_q, tol, "query")]
        if got is not None:
            valid = (slot_mapping >= 0).cpu()
            checks.append(judge(got[0], want_k[valid], tol, "key in the cache"))
            if not same_bits(got[1], v[valid.to(dev)]):
                return Result(Status.FAIL, "rotary_write_kv did not copy the values exactly to their slots")
        return worst(checks)

    return run


KV_WRITE_HEADS, KV_WRITE_BLOCKS, PADDING = 2, 64, 3


def _prefill_slots(g: torch.Generator, block_size: int, dev) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot mapping, positions) of two sequences' prefills crossing several block boundaries, in shuffled
    non-contiguous blocks (block 0 is the null block, never written), then PADDING tokens with slot -1."""
    blocks = (torch.randperm(KV_WRITE_BLOCKS - 1, generator=g) + 1).tolist()
    slots, positions = [], []
    for n in (3 * block_size + 1, 2 * block_size - 1):
        table, blocks = blocks[: -(-n // block_size)], blocks[-(-n // block_size):]
        slots += [table[p // block_size] * block_size + p % block_size for p in range(n)]
        positions += list(range(n))
    slots += [-1] * PADDING
    positions += [0] * PADDING
    return (torch.tensor(slots, dtype=torch.int64, device=dev), torch.tensor(positions, dtype=torch.int64, device=dev))


def _kv_cache(backend, block_size: int, head_dim: int, dt) -> Guarded:
    shape = backend.kv_cache_shape(KV_WRITE_BLOCKS, block_size, KV_WRITE_HEADS, head_dim)
    return Guarded(None, shape=shape, dtype=dt, device=backend.device())


def _written(cache: Guarded, slot_mapping: torch.Tensor, block_size: int, op: str):
    """A FAIL if the op wrote outside the cache or other than exactly the valid slots' elements; else the (K, V)
    rows at the valid slots, or None for a backend's own cache layout (positions are then checked through paged
    attention, level 2)."""
    if not cache.guards_intact():
        return Result(Status.FAIL, f"{op} wrote outside the KV cache tensor (a guard region changed)")
    t = cache.tensor
    valid = slot_mapping >= 0
    written = int((~torch.isnan(t.float())).sum())
    expected = 2 * int(valid.sum()) * KV_WRITE_HEADS * t.shape[-1]
    if written != expected:
        return Result(Status.FAIL, f"{op} changed {written} cache elements, expected exactly {expected} "
                                   "(2 x valid tokens x kv heads x head dim)")
    if tuple(t.shape) != (2, KV_WRITE_BLOCKS, block_size, KV_WRITE_HEADS, t.shape[-1]):
        return None
    s = slot_mapping[valid]
    return t[0, s // block_size, s % block_size], t[1, s // block_size, s % block_size]


# --- the cases -------------------------------------------------------------------------------------------------
def cases(backend) -> list[Case]:
    caps = backend.capabilities
    out: list[Case] = []
    for dtype in grid.dtypes(backend):
        na = "" if dtype in caps.dtypes else f"dtype {dtype} not declared"

        def add(cid, run, na=na, dtype=dtype, **params):
            out.append(Case(cid, "ops", None if na else run, dict(params, dtype=dtype), na))

        for tokens, hidden in ((1, 64), (7, 1000), (33, 4096)):
            for res in (False, True):
                add(f"ops/rms_norm/{dtype}/t{tokens}/d{hidden}" + ("/residual" if res else ""),
                    _rms_norm(tokens, hidden, dtype, res), tokens=tokens, hidden=hidden, residual=res)
        for hd in grid.head_sizes(backend):
            if hd not in caps.head_sizes:
                out.append(Case(f"ops/rotary_embedding/{dtype}/h{hd}", "ops", None, dict(dtype=dtype, head_size=hd),
                                na or f"head size {hd} not declared"))
                continue
            add(f"ops/rotary_embedding/{dtype}/h{hd}", _rotary(64, hd, dtype, ROPE_MAX_POSITIONS),
                head_size=hd, tokens=64, max_position=ROPE_MAX_POSITIONS)
        for tokens, d in ((1, 64), (7, 1000), (17, 11008)):
            add(f"ops/silu_and_mul/{dtype}/t{tokens}/d{d}", _silu_and_mul(tokens, d, dtype), tokens=tokens, d=d)
        hd = grid.default_head_size(backend)
        for bs in grid.block_sizes(backend):
            if bs not in caps.block_sizes:
                for op in ("write_kv", "rotary_write_kv"):
                    out.append(Case(f"ops/{op}/{dtype}/b{bs}", "ops", None, dict(dtype=dtype, block_size=bs),
                                    na or f"block size {bs} not declared"))
                continue
            add(f"ops/write_kv/{dtype}/b{bs}", _write_kv(dtype, hd, bs), head_size=hd, block_size=bs)
            add(f"ops/rotary_write_kv/{dtype}/b{bs}", _rotary_write_kv(dtype, hd, bs), head_size=hd, block_size=bs)
    for rows, vocab in ((1, 32), (4, 32000)):
        out.append(Case(f"ops/apply_penalties/float32/r{rows}/v{vocab}", "ops", _penalties(rows, vocab),
                        dict(rows=rows, vocab=vocab, dtype="float32")))
    return out
