"""Does prefetching weights into L2 on a side stream speed up a batch-1 decode step? (issue 5, benchmark 3)

At batch 1 the qkv and o products and the small kernels between them leave DRAM idle most of the time (cuBLAS
reaches 33-47% of copy bandwidth on qkv and o). A side stream, forked inside the captured decode graph, can read
the weights of a product that comes later into L2 while those run, so the product then reads from L2.

Each variant below is a captured batch-1 decode step (Llama-3.2-1B shape, bf16, random weights, ~256-token
context) with the same logits as the plain step; timings are graph-replay medians, in the same run as the plain
step. Fork points: "start" (before a layer's input norm) and "mlp" (after its gate_up product).

    python benchmarks/l2_prefetch_cuda.py

On an H200 no variant was faster than the plain step (0.43-1.00x; benchmarks/RESULTS.md), so the engine does not
prefetch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import triton
import triton.language as tl
from model_cuda import copy_bandwidth, make_checkpoint, single_decode_step, weight_bytes


@triton.jit
def _prefetch_load(ptr, n, sink, BLOCK: tl.constexpr):
    # Loads with evict_last, summed into a sink so the loads are not removed.
    pid = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(pid * BLOCK, n, step):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(ptr + offs, mask=offs < n, other=0, eviction_policy="evict_last")
    tl.store(sink + pid, tl.sum(acc))


@triton.jit
def _prefetch_line(ptr, n_lines, sink, LINES: tl.constexpr):
    # One `prefetch.global.L2::evict_last` per 128-byte line: no registers wait on the data.
    pid = tl.program_id(0)
    step = tl.num_programs(0) * LINES
    acc = tl.zeros([LINES], dtype=tl.int32)
    for start in range(pid * LINES, n_lines, step):
        line = tl.minimum(start + tl.arange(0, LINES), n_lines - 1)
        acc += tl.inline_asm_elementwise("prefetch.global.L2::evict_last [$1];\n\tmov.u32 $0, 0;", "=r,l",
                                         [ptr + line * 32], dtype=tl.int32, is_pure=False, pack=1)
    tl.store(sink + pid, tl.sum(acc))


@triton.jit
def _prefetch_bulk(ptr, n_chunks, sink, CHUNKS: tl.constexpr, CHUNK_BYTES: tl.constexpr):
    # Hopper's bulk L2 prefetch: one instruction per CHUNK_BYTES, issued through the TMA unit.
    pid = tl.program_id(0)
    step = tl.num_programs(0) * CHUNKS
    acc = tl.zeros([CHUNKS], dtype=tl.int32)
    size = tl.full([CHUNKS], CHUNK_BYTES, tl.int32)
    for start in range(pid * CHUNKS, n_chunks, step):
        chunk = tl.minimum(start + tl.arange(0, CHUNKS), n_chunks - 1)
        acc += tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2;\n\tmov.u32 $0, 0;", "=r,l,r",
                                         [ptr + chunk * (CHUNK_BYTES // 4), size], dtype=tl.int32, is_pure=False,
                                         pack=1)
    tl.store(sink + pid, tl.sum(acc))


SINK = {}


def prefetch(kind: str, t: torch.Tensor, ctas: int) -> None:
    words = t.view(-1).view(torch.int32)
    sink = SINK.setdefault(t.device, torch.zeros(1024, dtype=torch.int32, device=t.device))
    if kind == "load":
        _prefetch_load[(ctas,)](words, words.numel(), sink, BLOCK=1024, num_warps=4)
    elif kind == "line":
        _prefetch_line[(ctas,)](words, words.numel() // 32, sink, LINES=256, num_warps=4)
    else:
        chunk = 4096
        assert words.numel() * 4 % chunk == 0
        _prefetch_bulk[(ctas,)](words, words.numel() * 4 // chunk, sink, CHUNKS=32, CHUNK_BYTES=chunk, num_warps=1)


class Plan:
    """Which weights each layer prefetches at which fork point, with which kernel."""

    def __init__(self, model, *, o=False, gate_up_mb=0, next_qkv=False, next_o=False, kind="bulk", ctas=16):
        self.model, self.kind, self.ctas = model, kind, ctas
        self.o, self.gate_up_mb, self.next_qkv, self.next_o = o, gate_up_mb, next_qkv, next_o
        self.side = torch.cuda.Stream()

    def at(self, point: str, i: int) -> list[torch.Tensor]:
        layers = self.model.layers
        out = []
        if point == "start":
            if self.o:
                out.append(layers[i].self_attn.o_proj.weight)
            if self.gate_up_mb:
                w = layers[i].mlp.gate_up_proj.weight
                rows = min(w.shape[0], (self.gate_up_mb << 20) // (w.shape[1] * w.element_size()))
                out.append(w[:rows])
        elif point == "mlp" and i + 1 < len(layers):
            if self.next_qkv:
                out.append(layers[i + 1].self_attn.qkv_proj.weight)
            if self.next_o:
                out.append(layers[i + 1].self_attn.o_proj.weight)
        return out

    def fork(self, point: str, i: int) -> None:
        tensors = self.at(point, i)
        if not tensors:
            return
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            for t in tensors:
                prefetch(self.kind, t, self.ctas)

    def join(self) -> None:
        torch.cuda.current_stream().wait_stream(self.side)


PLAN: Plan | None = None


def layer_forward(self, positions, hidden, residual, kv_cache, metadata):
    if PLAN is not None:
        PLAN.fork("start", self._index)
    if residual is None:
        residual = hidden
        hidden = self.input_layernorm(hidden)
    else:
        hidden, residual = self.input_layernorm(hidden, residual)
    hidden = self.self_attn(positions, hidden, kv_cache, metadata)
    hidden, residual = self.post_attention_layernorm(hidden, residual)
    mlp = self.mlp
    gate_up = mlp.gate_up_proj(hidden)
    if PLAN is not None:
        PLAN.fork("mlp", self._index)
    return mlp.down_proj(mlp.ops.silu_and_mul(gate_up)), residual


@torch.inference_mode()
def main() -> None:
    global PLAN
    from unifer import LLM
    from unifer.model import llama

    llama.DecoderLayer.forward = layer_forward
    folder = make_checkpoint(Path(tempfile.mkdtemp()) / "llama-1b-shape")
    llm = LLM(model=str(folder), backend="cuda", dtype="bfloat16", max_model_len=2048, max_num_seqs=1)
    for i, layer in enumerate(llm.engine.model.layers):
        layer._index = i
    model, capture_with = single_decode_step(llm, context=256)
    bw = copy_bandwidth()
    roofline = weight_bytes(llm) / bw * 1e3

    def capture(plan):
        global PLAN
        PLAN = plan
        replay = capture_with(None if plan is None else plan.join)
        PLAN = None
        return replay

    variants = {
        "plain": None,
        "o": dict(o=True),
        "next qkv": dict(next_qkv=True),
        "o + next qkv": dict(o=True, next_qkv=True),
        "next qkv + next o": dict(next_qkv=True, next_o=True),
        "o + gu 8MB + next qkv": dict(o=True, gate_up_mb=8, next_qkv=True),
        "o + gu 16MB + next qkv": dict(o=True, gate_up_mb=16, next_qkv=True),
        "o + gu 32MB + next qkv": dict(o=True, gate_up_mb=32, next_qkv=True),
        "o + next qkv, load 16": dict(o=True, next_qkv=True, kind="load", ctas=16),
        "o + next qkv, load 66": dict(o=True, next_qkv=True, kind="load", ctas=66),
        "o + next qkv, line 16": dict(o=True, next_qkv=True, kind="line", ctas=16),
        "o + next qkv, line 66": dict(o=True, next_qkv=True, kind="line", ctas=66),
        "o + next qkv, bulk 4": dict(o=True, next_qkv=True, kind="bulk", ctas=4),
        "o + next qkv, bulk 64": dict(o=True, next_qkv=True, kind="bulk", ctas=64),
    }
    print(f"device: {torch.cuda.get_device_name()}; copy bandwidth {bw / 1e9:.0f} GB/s; roofline {roofline:.3f} ms")
    print(f"{'variant':<28}{'replay ms':>10}{'vs plain':>9}{'roofline':>9}  logits")
    reference = None
    plain_ms = None
    for name, kwargs in variants.items():
        try:
            replay = capture(None if kwargs is None else Plan(model, **kwargs))
            logits = replay().clone()
            torch.cuda.synchronize()
            if reference is None:
                reference = logits
            same = torch.equal(logits, reference)
            ms = min(triton.testing.do_bench(replay, warmup=20, rep=200, return_mode="median") for _ in range(3))
        except Exception as exc:
            print(f"{name:<28}  error: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        plain_ms = plain_ms or ms
        print(f"{name:<28}{ms:>10.4f}{plain_ms / ms:>9.3f}{roofline / ms:>8.0%}  {'same' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
