"""The fixed grid of capabilities, and claims checked both ways against ``Backend.check_supported``.

Every grid value the backend declares is run; every one it does not is listed as NOT_APPLICABLE, and for those
the backend must refuse with a typed ``Unsupported`` (a claim case) rather than run wrongly.
"""

from __future__ import annotations

import torch

from unifer_conformance.case import Case, Result, Status

DTYPES = ("float32", "bfloat16", "float16")
HEAD_SIZES = (64, 80, 96, 128, 256)
BLOCK_SIZES = (16, 32, 64)
GQA_RATIOS = (1, 2, 4, 8)


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def dtypes(backend) -> list[str]:
    """Grid dtypes plus any extra the backend declares, in a stable order."""
    return list(DTYPES) + [d for d in backend.capabilities.dtypes if d not in DTYPES and hasattr(torch, d)]


def head_sizes(backend) -> list[int]:
    return sorted(set(HEAD_SIZES) | set(backend.capabilities.head_sizes))


def block_sizes(backend) -> list[int]:
    return sorted(set(BLOCK_SIZES) | set(backend.capabilities.block_sizes))


def default_head_size(backend) -> int:
    caps = backend.capabilities.head_sizes
    return 128 if 128 in caps else min(caps)


def default_block_size(backend) -> int:
    caps = backend.capabilities.block_sizes
    return 16 if 16 in caps else min(caps)


def undeclared(backend, *, dtype: str, head_size: int, block_size: int, gqa_ratio: int,
               sliding_window: bool = False, soft_cap: bool = False) -> str:
    """Why the combination is outside the declared Capabilities ("" when it is declared)."""
    caps = backend.capabilities
    reasons = []
    if dtype not in caps.dtypes:
        reasons.append(f"dtype {dtype} not declared")
    if head_size not in caps.head_sizes:
        reasons.append(f"head size {head_size} not declared")
    if block_size not in caps.block_sizes:
        reasons.append(f"block size {block_size} not declared")
    if gqa_ratio > caps.max_gqa_ratio:
        reasons.append(f"GQA ratio {gqa_ratio} above max_gqa_ratio {caps.max_gqa_ratio}")
    if sliding_window and not caps.sliding_window:
        reasons.append("sliding window not declared")
    if soft_cap and not caps.logit_soft_cap:
        reasons.append("soft-cap not declared")
    return "; ".join(reasons)


def _check(backend, combo: dict) -> BaseException | None:
    from unifer.backends import Unsupported  # noqa: F401  (typed error the contract promises)

    try:
        backend.check_supported(
            dtype=torch_dtype(combo["dtype"]), head_size=combo["head_size"], block_size=combo["block_size"],
            gqa_ratio=combo["gqa_ratio"], sliding_window=4096 if combo.get("sliding_window") else None,
            soft_cap=30.0 if combo.get("soft_cap") else None)
    except BaseException as exc:  # noqa: BLE001  (any refusal is examined by the caller)
        return exc
    return None


def claim_case(case_id: str, combo: dict, expect_supported: bool) -> Case:
    """A case checking one claim: a declared combination must be accepted, an undeclared one refused with
    ``Unsupported`` (any other exception, or silently accepting it, is a FAIL)."""

    def run(backend, config, seed) -> Result:
        from unifer.backends import Unsupported

        exc = _check(backend, combo)
        if expect_supported:
            if exc is None:
                return Result(Status.PASS, "declared and accepted by check_supported")
            return Result(Status.FAIL, f"declared in Capabilities but check_supported raised "
                                       f"{type(exc).__name__}: {exc}")
        if isinstance(exc, Unsupported):
            return Result(Status.PASS, f"refused as it should be: {exc}")
        if exc is None:
            return Result(Status.FAIL, "not declared in Capabilities, yet check_supported accepted it "
                                       "(it must raise unifer.backends.Unsupported)")
        return Result(Status.FAIL, f"not declared; check_supported raised {type(exc).__name__} instead of "
                                   f"Unsupported: {exc}")

    return Case(case_id, "claims", run, params=dict(combo, expect_supported=expect_supported))


def claim_cases(backend) -> list[Case]:
    """One claim per grid value (holding the others at declared defaults), both ways."""
    caps = backend.capabilities
    base = dict(dtype=caps.dtypes[0], head_size=default_head_size(backend),
                block_size=default_block_size(backend), gqa_ratio=1)
    cases = []
    for d in dtypes(backend):
        cases.append(claim_case(f"claims/dtype/{d}", dict(base, dtype=d), d in caps.dtypes))
    for h in head_sizes(backend):
        cases.append(claim_case(f"claims/head_size/h{h}", dict(base, head_size=h), h in caps.head_sizes))
    for b in block_sizes(backend):
        cases.append(claim_case(f"claims/block_size/b{b}", dict(base, block_size=b), b in caps.block_sizes))
    for g in sorted(set(GQA_RATIOS) | {caps.max_gqa_ratio, caps.max_gqa_ratio * 2}):
        cases.append(claim_case(f"claims/gqa/g{g}", dict(base, gqa_ratio=g), g <= caps.max_gqa_ratio))
    cases.append(claim_case("claims/sliding_window", dict(base, sliding_window=True), caps.sliding_window))
    cases.append(claim_case("claims/soft_cap", dict(base, soft_cap=True), caps.logit_soft_cap))
    return cases
