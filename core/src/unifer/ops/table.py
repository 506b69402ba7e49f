"""The ops table: the only override point for a backend's kernels.

Each op has one signature, fixed by its reference implementation in ``unifer.ops.reference`` (keyword arguments
beyond the leading tensors, so a later contract version can add defaulted ones). A backend's ``native_ops()``
returns any subset; the rest fall back to the reference, except the fused ops of ``COMPOSITES``, which fall back
to their parts as the table resolves them (a backend with native rotary and KV-write kernels keeps both when it
has no fused kernel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unifer.ops import reference

OP_NAMES: tuple[str, ...] = (
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "write_kv",
    "rotary_write_kv",
    "paged_attention",
    "apply_penalties",
    "apply_top_k_top_p_min_p",
    "random_sample",
)


@dataclass(frozen=True)
class Ops:
    rms_norm: Callable[..., Any]
    rotary_embedding: Callable[..., Any]
    silu_and_mul: Callable[..., Any]
    write_kv: Callable[..., Any]
    rotary_write_kv: Callable[..., Any]
    paged_attention: Callable[..., Any]
    apply_penalties: Callable[..., Any]
    apply_top_k_top_p_min_p: Callable[..., Any]
    random_sample: Callable[..., Any]
    native: frozenset[str] = frozenset()
    # (op, label) pairs naming where a native op's kernel comes from ("ipex", "triton", ...), for `unifer backends`.
    sources: tuple[tuple[str, str], ...] = ()

    def source(self, name: str) -> str:
        """Where op ``name`` comes from: "fallback" (the reference), "composite" (a fused op run as its parts),
        the backend's label, or "native"."""
        if name not in self.native:
            return "composite" if name in COMPOSITES else "fallback"
        return dict(self.sources).get(name, "native")


def _rotary_write_kv(rotary_embedding, write_kv):
    def rotary_write_kv(positions, query, key, value, cos_sin_cache, kv_cache, slot_mapping):
        query, key = rotary_embedding(positions, query, key, cos_sin_cache)
        write_kv(key, value, kv_cache, slot_mapping)
        return query

    return rotary_write_kv


# fused op -> (its parts, a builder of the fused op from the resolved parts)
COMPOSITES: dict[str, tuple[tuple[str, ...], Callable[..., Callable[..., Any]]]] = {
    "rotary_write_kv": (("rotary_embedding", "write_kv"), _rotary_write_kv),
}


def resolve_ops(native: dict[str, Callable[..., Any]], sources: dict[str, str] | None = None) -> Ops:
    unknown = set(native) - set(OP_NAMES)
    if unknown:
        raise ValueError(f"unknown op name(s) {sorted(unknown)}; the contract's ops are {list(OP_NAMES)}")
    sources = sources or {}
    stray = set(sources) - set(native)
    if stray:
        raise ValueError(f"op source label(s) for {sorted(stray)}, which native_ops() does not provide")
    table = {name: native.get(name) or getattr(reference, name) for name in OP_NAMES}
    for name, (parts, build) in COMPOSITES.items():
        if name not in native:
            table[name] = build(*(table[part] for part in parts))
    return Ops(**table, native=frozenset(native), sources=tuple(sorted(sources.items())))
