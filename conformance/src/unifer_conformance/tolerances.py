"""THE tolerance table: every numeric bound of the suite, per op family and dtype, with where it came from.

A case compares the backend's output with ``unifer.ops.reference`` run on the same inputs in float64 and passes
when both its max abs error and its normalised squared error (sum((x - ref)^2) / sum(ref^2), the NMSE of
llama.cpp's test-backend-ops) are within the row for its op and dtype.

Where the numbers come from: ``python -m unifer_conformance.calibrate`` runs the reference ops in each dtype over
the suite's own grid of inputs (unit-normal values, the shapes of the fixed grid) and prints the largest error
a correct implementation shows against float64. Each bound is about 1.5x that observed error, rounded up to a
round number, and raised where a correct kernel legitimately rounds differently from the reference (noted per
row). The observed values are kept in the ``observed`` column so a reviewer can see the margin. Inputs are
unit-normal, so absolute errors are also roughly relative errors. Do not loosen a bound to make a backend pass:
a bound that needs to move is a change to this table, reviewed with the calibration output that justifies it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    max_abs: float
    nse: float
    observed_max_abs: float = 0.0  # calibration: the reference op in this dtype against float64
    observed_nse: float = 0.0
    source: str = ""


_CAL = "1.5x calibrate (reference op in this dtype vs float64, grid inputs)"

TOLERANCES: dict[tuple[str, str], Tolerance] = {
    # (op, dtype): Tolerance(bound max abs, bound nse, observed max abs, observed nse, source). Observed: calibrate
    # with --seeds 5 over the reference ops and the CPU backend (torch 2.13, x86-64). The paged-attention rows
    # (2026-12-01) also count calibrate's FlashAttention-style emulation and every random example of the property
    # cases; the other rows predate that (calibrate now prints up to 1.4x their observed values, within bounds).
    # float32 nse raised from 1e-14 to 4e-14 after the H100 run (2026-11-23): Triton's rsqrt is the hardware's
    # approximate one (~2 ulp), observed 1.61e-14 on a 3000-wide row; still ~1e9 below a 1% scale error.
    ("rms_norm", "float32"): Tolerance(2e-6, 4e-14, 1.29e-6, 1.61e-14, _CAL + "; GPU rsqrt.approx"),
    ("rms_norm", "bfloat16"): Tolerance(7e-2, 1.7e-5, 4.65e-2, 1.10e-5, _CAL + "; 2 roundings (norm, weight)"),
    ("rms_norm", "float16"): Tolerance(1e-2, 2.2e-7, 6.42e-3, 1.46e-7, _CAL + "; 2 roundings (norm, weight)"),
    # rotary: float32 cos/sin table; the output rounded once to the dtype.
    ("rotary_embedding", "float32"): Tolerance(7e-7, 2.1e-15, 4.56e-7, 1.39e-15, _CAL),
    ("rotary_embedding", "bfloat16"): Tolerance(2.3e-2, 4.2e-6, 1.53e-2, 2.80e-6, _CAL),
    ("rotary_embedding", "float16"): Tolerance(3e-3, 6.5e-8, 1.95e-3, 4.35e-8, _CAL),
    # silu_and_mul inputs have std 2 (products up to ~60), so the absolute bounds are larger than the others.
    ("silu_and_mul", "float32"): Tolerance(6.5e-6, 8e-15, 4.32e-6, 5.29e-15, _CAL),
    ("silu_and_mul", "bfloat16"): Tolerance(2.5e-1, 2.2e-5, 1.69e-1, 1.46e-5, _CAL + "; silu and product rounded"),
    ("silu_and_mul", "float16"): Tolerance(4e-2, 2.2e-7, 2.67e-2, 1.42e-7, _CAL + "; silu and product rounded"),
    # paged attention: K/V/Q rounded to the dtype first (the cache stores them so), float32 softmax, the output
    # rounded once; and, in bfloat16/float16, the softmax probabilities rounded to the dtype before the product with
    # V as well: every FlashAttention-style kernel does that (core's Triton kernel: p.to(v.dtype); IPEX's
    # flash_attn_varlen), legitimately, since the tensor cores multiply in the input dtype. Observed: the largest of
    # the reference ops, the CPU backend (torch SDPA) and calibrate's float64 emulation of that P rounding
    # (flash_paged_attention: IPEX 2.8's CPU kernel shows 0.94-1.01x its nse on 20 scenarios, the H200's Triton
    # kernel 0.95-1.0x on long_chunk bf16 / long_decode fp16, 0.97-0.98 of the old bounds). nse from the emulation
    # (1.1-2x the output-only rounding on long contexts); bf16 max abs from a random example whose output is above
    # 4, where bf16's half-ulp is 1.56e-2: the correctly rounded float64 answer alone is off by 1.53e-2 there.
    # bf16 nse 8e-6 is 1.41x the worst random example, 1.54x the worst grid case: not 8.5e-6, so that a 1% softmax
    # scale error still fails every bf16 grid case on seeds 0-2 (the soft-cap ones, where tanh absorbs most of
    # it, at 1.06x). Raised 2026-12-01 from bf16 1.2e-2 / 5e-6, fp16 nse 8e-8 (fitted to output-only rounding).
    ("paged_attention", "float32"): Tolerance(4e-6, 5e-13, 2.91e-6, 2.04e-13, _CAL + "; nse 3x for tiled softmax"),
    ("paged_attention", "bfloat16"): Tolerance(2.3e-2, 8e-6, 1.53e-2, 5.67e-6, _CAL + "; flash-style P rounding"),
    ("paged_attention", "float16"): Tolerance(2.5e-3, 1.4e-7, 1.68e-3, 8.97e-8, _CAL + "; flash-style P rounding"),
    # penalties run on float32 logits (the sampler's dtype); the nse bound allows 1-ulp differences everywhere.
    ("apply_penalties", "float32"): Tolerance(3.5e-6, 1e-14, 2.31e-6, 8.77e-16, _CAL + "; nse floor 1e-14"),
    # End to end: logprobs of the same greedy token, tested backend vs the CPU reference backend, float32 model.
    # Not calibrated like the ops: two correct engines differ by matmul summation order through 2 layers and the
    # LM head. A judgement, documented as such: float32 1e-3 (a wrong kernel moves logprobs by >= 1e-2 on these
    # models); reduced precision ~ 30 ulp of a logprob of magnitude ~6. Only max abs is judged (nse unused).
    ("logprobs", "float32"): Tolerance(1e-3, 0.0, 0.0, 0.0, "judgement: summation order through the model"),
    ("logprobs", "bfloat16"): Tolerance(2.5e-1, 0.0, 0.0, 0.0, "judgement: bf16 has 8 mantissa bits"),
    ("logprobs", "float16"): Tolerance(5e-2, 0.0, 0.0, 0.0, "judgement: fp16 has 11 mantissa bits"),
}

# The normalised squared error is an average: on a handful of elements one correctly rounded value can exceed the
# calibrated mean (fp16's unit roundoff squared is 2.4e-7 per element). Below this many elements only max abs counts.
NSE_MIN_ELEMENTS = 256

# Sampling: statistical, not numeric.
CHI_SQUARE_ALPHA = 1e-4  # a correct sampler fails one distribution case in 10,000 runs; fixed seeds make it stable
TOP_N_AT_DIVERGENCE = 5  # e2e: at the first differing greedy token each side's token is in the other's top-5
# e2e in bfloat16 / float16: two correct engines round matmuls differently, so greedy paths can split wherever two
# tokens are tied within that rounding. A split passes only between such near-ties: each token in the other's
# top-N and the reference's own logprob gap between the two within the dtype's logprob tolerance (float32 must
# match exactly). Observed on an H100 (bf16): splits with gaps under 0.05 as early as step 1.


def tolerance(op: str, dtype: str) -> Tolerance:
    try:
        return TOLERANCES[(op, dtype)]
    except KeyError:
        raise KeyError(f"no tolerance for op {op!r} in dtype {dtype!r}; add a calibrated row to "
                       "unifer_conformance/tolerances.py") from None
