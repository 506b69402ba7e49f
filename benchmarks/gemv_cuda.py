"""Batch-1 (and small-batch) matrix products at the Llama-3.2-1B shapes, bf16: torch's F.linear under each of its
BLAS back-ends (cuBLAS, cuBLASLt) and torch.mv, as graph replays, against the copy bandwidth (the bytes are the
weight matrix). Chooses what the CUDA backend's decode path should use for its projections.

    python benchmarks/gemv_cuda.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from attention_cuda import bench_graph, copy_bandwidth

SHAPES = {"qkv": (3072, 2048), "o": (2048, 2048), "gate_up": (16384, 2048), "down": (2048, 8192),
          "lm_head": (128256, 2048)}


def main() -> None:
    bw = copy_bandwidth("cuda")
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s (read + write); % = weight bytes / time / copy bandwidth")
    print(f"{'shape':<9}{'M':>4}" + "".join(f"{name:>18}" for name in ("linear/cublaslt", "linear/cublas", "mv")))
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device="cuda").to(torch.bfloat16)
        for m in (1, 4):
            x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
            cells = []
            for lib in ("cublaslt", "cublas", "mv"):
                if lib == "mv":
                    if m != 1:
                        cells.append(f"{'-':>18}")
                        continue
                    fn = lambda w=w, x=x: torch.mv(w, x[0])  # noqa: E731
                else:
                    torch.backends.cuda.preferred_blas_library(lib)
                    fn = lambda w=w, x=x: F.linear(x, w)  # noqa: E731
                ms = bench_graph(fn)
                cells.append(f"{ms * 1e3:>9.1f}us {100 * w.numel() * 2 / (ms * 1e-3) / bw:>4.0f}%")
            print(f"{name:<9}{m:>4}" + "".join(cells))
    torch.backends.cuda.preferred_blas_library("cublaslt")


if __name__ == "__main__":
    main()
