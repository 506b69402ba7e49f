"""Batch-1 (and small-batch) matrix products at the Llama-3.2-1B shapes, bf16, as graph replays against the copy
bandwidth (the bytes are the weight matrix). Every variant is a torch matrix product; they differ in how the
problem is posed to cuBLAS, which picks its kernel (tile shape, split-K) from that:
  linear   F.linear(x, W), W stored [out, in] (the model's layout: cuBLAS 'TN')
  x@Wt     x @ Wt, the weight stored transposed [in, out] ('NN')
  mv       torch.mv(W, x) (M = 1 only)
  bmmS     split-K posed as a batched product over S slices of K, then a sum over the slices
Each timing cycles through copies of W that overflow L2 four times, as a decode step reads every weight cold.
Chooses how the CUDA backend's decode path should pose its projections.

    python benchmarks/gemv_cuda.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from attention_cuda import bench_graph, copy_bandwidth

SHAPES = {"qkv": (3072, 2048), "o": (2048, 2048), "gate_up": (16384, 2048), "down": (2048, 8192),
          "lm_head": (128256, 2048)}


def split_k(x: torch.Tensor, w: torch.Tensor, slices: int) -> torch.Tensor:
    m, k = x.shape
    n = w.shape[0]
    xs = x.view(m, slices, k // slices).transpose(0, 1)  # [S, M, K/S]
    ws = w.view(n, slices, k // slices).permute(1, 2, 0)  # [S, K/S, N], column-major slices of W
    return torch.bmm(xs, ws).sum(0, dtype=torch.float32).to(x.dtype)


def variants(x: torch.Tensor, w: torch.Tensor) -> dict:
    wt = w.t().contiguous()
    out = {"linear": lambda: F.linear(x, w), "x@Wt": lambda: x @ wt}
    out["mv"] = (lambda: torch.mv(w, x[0])) if x.shape[0] == 1 else None
    for s in (2, 4, 8):
        out[f"bmm{s}"] = lambda s=s: split_k(x, w, s)
    return out


def cold_copies(w: torch.Tensor) -> list[torch.Tensor]:
    """W and enough copies of it to overflow L2 four times (decode reads every weight cold)."""
    l2_bytes = torch.cuda.get_device_properties(w.device).L2_cache_size
    copies = max(1, -(-4 * l2_bytes // (w.numel() * w.element_size())))
    return [w] + [w.clone() for _ in range(copies - 1)]


def main() -> None:
    bw = copy_bandwidth("cuda")
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s (read + write); cells: time, weight bytes / time / copy bandwidth")
    names = None
    for name, (n, k) in SHAPES.items():
        weights = cold_copies(torch.randn(n, k, device="cuda").to(torch.bfloat16))
        w = weights[0]
        for m in (1, 4):
            x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
            tables = [variants(x, wi) for wi in weights]
            if names is None:
                names = list(tables[0])
                print(f"{'shape':<9}{'M':>3}" + "".join(f"{v:>15}" for v in names))
            ref = F.linear(x.double(), w.double())
            cells = []
            for label, fn in tables[0].items():
                if fn is None:
                    cells.append(f"{'-':>15}")
                    continue
                err = ((fn().double() - ref).norm() / ref.norm()).item()
                if err > 1e-2:
                    raise AssertionError(f"{name} M={m}: relative error {err:.2e}")
                ms = bench_graph(lambda label=label, tables=tables: [t[label]() for t in tables]) / len(weights)
                cells.append(f"{ms * 1e3:>8.1f}us {100 * w.numel() * 2 / (ms * 1e-3) / bw:>3.0f}%")
            print(f"{name:<9}{m:>3}" + "".join(cells))


if __name__ == "__main__":
    main()
