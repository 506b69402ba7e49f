"""Prints the errors that correct implementations show against float64 on the suite's own inputs: the evidence
behind tolerances.py. Run: ``python -m unifer_conformance.calibrate [--seeds 5]``.

The correct implementations are the reference ops run in each dtype (a backend with no native op) and the CPU
backend (torch SDPA attention), over the ops and attention levels with several suite seeds. For paged attention a
third one is measured: a float64 emulation of FlashAttention-style rounding (``flash_paged_attention``), the scheme
of every tiled kernel (core's Triton kernel, IPEX's flash_attn_varlen): the softmax probabilities are rounded to
the input dtype before the product with V, not only the output. A bound in tolerances.py should be about 1.5x the
largest value printed here for its row.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch


def _family(case_id: str) -> str:
    parts = case_id.split("/")
    if parts[0] == "attention" or parts[:2] == ["property", "attention"]:
        return "paged_attention"
    return parts[1] if parts[0] == "ops" else parts[2]


def flash_paged_attention(query, kv_cache, metadata, *, scale, sliding_window=None, soft_cap=None):
    """unifer.ops.reference.paged_attention with a FlashAttention-style kernel's roundings, emulated in float64:
    Q, K, V in their dtype (as stored), scores and softmax in float64, the unnormalised probabilities
    exp(s - max) rounded to the input dtype before the product with V (Triton's ``p.to(v.dtype)``), the
    normaliser summed from the unrounded ones, the output rounded once. A tiled kernel rounds exp(s - m) against
    its running maximum instead of the row's; the relative rounding error per element is the same."""
    query_start, seq_lens = metadata.host_lists()
    num_kv_heads, head_dim, block_size = kv_cache.shape[3], kv_cache.shape[4], kv_cache.shape[2]
    group = query.shape[1] // num_kv_heads
    out = torch.empty_like(query)
    for i, seq_len in enumerate(seq_lens):
        q0, q1 = query_start[i], query_start[i + 1]
        if q1 == q0:
            continue
        blocks = metadata.block_table[i, : -(-seq_len // block_size)].long()
        k = kv_cache[0, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].double().repeat_interleave(group, 1)
        v = kv_cache[1, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].double().repeat_interleave(group, 1)
        scores = torch.einsum("qhd,khd->hqk", query[q0:q1].double(), k) * scale
        if soft_cap:
            scores = soft_cap * torch.tanh(scores / soft_cap)
        q_pos = torch.arange(seq_len - (q1 - q0), seq_len)[:, None]
        k_pos = torch.arange(seq_len)[None, :]
        visible = k_pos <= q_pos
        if sliding_window:
            visible &= k_pos > q_pos - sliding_window
        scores = scores.masked_fill(~visible, float("-inf"))
        e = (scores - scores.amax(-1, keepdim=True)).exp()
        p = e.to(query.dtype).double()
        o = torch.einsum("hqk,khd->qhd", p, v) / e.sum(-1).transpose(0, 1)[..., None]
        out[q0:q1] = o.to(query.dtype)
    return out


def reference_backend(flash: bool = False):
    """A backend with no native op: every kernel is unifer.ops.reference. With ``flash``, paged attention is
    ``flash_paged_attention`` (the float64 emulation of FlashAttention-style rounding)."""
    from unifer.backends import Availability, Backend, Capabilities

    class ReferenceOnly(Backend):
        name = "flash-emulation" if flash else "reference-only"
        device_type = "cpu"
        capabilities = Capabilities(head_sizes=(32, 64, 80, 96, 128, 256), block_sizes=(8, 16, 32, 64),
                                    max_gqa_ratio=16)

        def probe(self):
            return Availability(True, "calibration")

        def native_ops(self):
            return {"paged_attention": flash_paged_attention} if flash else {}

    return ReferenceOnly()


def observed(backends, seeds: int, levels=("ops", "attention")) -> dict:
    """(op family, dtype) -> [max abs, nse, where the largest nse was] over every case of ``levels``, PASS or FAIL
    alike. Property cases count every random example they judge (not only a failing one), in its own op and
    dtype; an nse on fewer than NSE_MIN_ELEMENTS elements is not judged by the suite, so not counted either."""
    from unifer_conformance import properties
    from unifer_conformance.case import SuiteConfig
    from unifer_conformance.case import judge as suite_judge
    from unifer_conformance.suite import collect, run_case
    from unifer_conformance.tolerances import NSE_MIN_ELEMENTS, TOLERANCES

    worst: dict = defaultdict(lambda: [0.0, 0.0, ""])
    current = [""]

    def record(key, max_abs, nse, where):
        row = worst[key]
        row[0] = max(row[0], max_abs)
        if nse > row[1]:
            row[1], row[2] = nse, where

    def recording_judge(actual, expected, tol, what="output"):
        result = suite_judge(actual, expected, tol, what)
        key = next((k for k, v in TOLERANCES.items() if v is tol), None)
        if key and result.max_abs_err is not None and result.max_abs_err != float("inf"):
            nse = result.nse if expected.numel() >= NSE_MIN_ELEMENTS else 0.0
            record(key, result.max_abs_err, nse, current[0][:-1] + ", a random example)")
        return result

    properties.judge = recording_judge
    try:
        for backend in backends:
            for seed in range(seeds):
                config = SuiteConfig(seed=seed)
                for case in collect(backend, levels, config):
                    if case.level == "claims" or case.run is None:
                        continue
                    current[0] = f"{case.id} (seed {seed}, {backend.name})"
                    result, _, _ = run_case(case, backend, config)
                    if case.id.startswith("property/"):
                        continue  # recorded example by example
                    if result.max_abs_err is None or result.max_abs_err == float("inf"):
                        continue
                    record((_family(case.id), case.params.get("dtype")), result.max_abs_err, result.nse,
                           current[0])
    finally:
        properties.judge = suite_judge
    return dict(worst)


def _table(rows: dict) -> None:
    from unifer_conformance.tolerances import TOLERANCES

    nan = float("nan")
    print(f"{'op':20} {'dtype':9} {'observed max abs':>17} {'bound':>9} {'observed nse':>13} {'bound':>9}  "
          f"largest nse in")
    for (op, dtype), (mx, nse, where) in sorted(rows.items()):
        tol = TOLERANCES.get((op, dtype))
        print(f"{op:20} {dtype:9} {mx:17.2e} {tol.max_abs if tol else nan:9.1e} {nse:13.2e} "
              f"{tol.nse if tol else nan:9.1e}  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split(" Run:")[0].replace("\n", " "))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--flash-only", action="store_true",
                        help="measure only the FlashAttention-style emulation of paged attention")
    args = parser.parse_args()
    from unifer.backends import select_backend

    if not args.flash_only:
        print("reference ops in each dtype and the CPU backend (torch SDPA attention):")
        _table(observed([reference_backend(), select_backend("cpu")], args.seeds))
        print()
    print("paged attention, float64 emulation of FlashAttention-style rounding (P in the dtype before P@V), "
          "attention level:")
    flash = observed([reference_backend(flash=True)], args.seeds, levels=("attention",))
    _table({k: v for k, v in flash.items() if k[0] == "paged_attention"})


if __name__ == "__main__":
    main()
