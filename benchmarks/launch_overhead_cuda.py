"""Host time per launch of what an eager step is made of: the library's Triton ops through their wrappers, the
same kernel through Triton's JIT entry point, and through the compiled kernel's own launcher (which skips the
JIT's argument binding, specialisation and cache lookup); torch's linear and empty for scale. An eager step is
~90% host time (benchmarks/RESULTS.md, "Eager steps"); this says which layer of a launch the time goes to.

Each row times N calls back to back without synchronising (the kernels are tiny, so the host is the bottleneck),
median of 5 rounds, µs per call. The ratio column is against the wrapper (the engine's path).

    python benchmarks/launch_overhead_cuda.py
"""

from __future__ import annotations

import statistics
import time

import torch

N = 2000


def per_call_us(fn) -> float:
    fn()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(N):
            fn()
        rounds.append((time.perf_counter() - t0) / N * 1e6)
        torch.cuda.synchronize()
    return statistics.median(rounds)


def main() -> None:
    import torch.nn.functional as F
    import triton.language as tl
    from unifer.kernels.triton.dependent_launch import launch_options
    from unifer.kernels.triton.norm import _rms_norm_kernel, rms_norm

    dev = torch.device("cuda")
    x = torch.randn(8, 2048, device=dev, dtype=torch.bfloat16)
    r = torch.randn_like(x)
    w = torch.randn(2048, device=dev, dtype=torch.bfloat16)
    out, summed = torch.empty_like(x), torch.empty_like(x)
    weight = torch.randn(3072, 2048, device=dev, dtype=torch.bfloat16)
    pdl = launch_options(dev)
    args = (x, r, w, out, summed, x.stride(0), r.stride(0), out.stride(0), summed.stride(0), 2048, 1e-5)
    consts = dict(BLOCK=2048, HAS_RESIDUAL=True, ACC=tl.float32, PDL=pdl["PDL"])

    def jit():
        return _rms_norm_kernel[(8,)](*args, **consts, **({"launch_pdl": True} if pdl["PDL"] else {}), num_warps=8)

    compiled = jit()
    direct = compiled[(8, 1, 1)]
    all_args = (*args, *consts.values())

    rows = {
        "rms_norm + residual, the op's wrapper": lambda: rms_norm(x, w, 1e-5, r),
        "the same kernel, Triton's JIT entry": jit,
        "the same kernel, the compiled kernel's launcher": lambda: direct(*all_args),
        "torch F.linear [8, 2048] x [3072, 2048]": lambda: F.linear(x, weight),
        "torch.empty [8, 2048]": lambda: torch.empty(8, 2048, device=dev, dtype=torch.bfloat16),
        "torch add [8, 2048]": lambda: torch.add(x, r),
    }
    print(f"device {torch.cuda.get_device_name()}; dependent launch {'on' if pdl['PDL'] else 'off'}; {N} calls")
    times = {name: per_call_us(fn) for name, fn in rows.items()}
    base = times["rms_norm + residual, the op's wrapper"]
    for name, us in times.items():
        print(f"  {name:<52} {us:7.2f} us per call  ({us / base:.2f} of the wrapper)")


if __name__ == "__main__":
    main()
