"""Batch-1 engine step against how the decode graphs are captured: one graph per bucket or one per listed context
(``Backend.decode_graph_contexts``), and the split-KV segment count they launch. Each variant runs in its own
process, twice, alternating; Llama-3.2-1B shape, bf16, random weights, contexts of 133-388 positions.

    python benchmarks/graph_contexts_cuda.py [--variants 2048/single,131072/floor,...]

Variants, ``max_model_len/how[/max_num_seqs]`` (max_num_seqs default 1, so the batch-1 bucket is the only one):
- ``single``: one graph per bucket, at max_model_len (contract 1.3's runner);
- ``floor``: the CUDA backend's listed contexts (this tree);
- ``nofloor``: listed contexts with ``graph_min_seq_len`` 0 (short contexts unsplit);
- ``same3``: three graphs of the batch-1 bucket, all launching the count of 2048 positions;
- ``single16``: one graph per bucket, at most 16 segments;
and modifiers after a ``+``: ``pools`` (each graph in its own memory pool), ``nopdl`` (without programmatic
dependent launch), ``asc`` (buckets captured smallest first), ``tinyfirst`` / ``tinyafter`` (a one-kernel graph
in its own pool captured before the first decode graph / after each).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

VARIANTS = "2048/single,2048/same3,2048/nofloor,131072/single,131072/single16,131072/floor"


def patch(variant: str) -> None:
    import torch
    import unifer.kernels.triton.attention as attention
    import unifer.kernels.triton.graphs as graphs
    from unifer_cuda.backend import CUDABackend

    how, *modifiers = variant.split("+")
    choose, split = attention.choose_num_segments, graphs.split_contexts
    if how in ("single", "single16"):
        CUDABackend.decode_graph_contexts = lambda self, **kw: [kw["max_model_len"]]
    if how == "single16":
        attention.choose_num_segments = lambda *a, **kw: min(choose(*a, **kw), 16)
    if how == "nofloor":
        graphs.split_contexts = lambda cfg, **kw: split(replace(cfg, graph_min_seq_len=0), **kw)
    if how == "same3":
        CUDABackend.decode_graph_contexts = lambda self, **kw: [512, 1024, kw["max_model_len"]]
        attention.choose_num_segments = lambda n, length, cfg, **kw: choose(n, max(length, 2048), cfg, **kw)
    if "pools" in modifiers:
        from unifer_cuda.graphs import CUDAGraphRunner

        capture = CUDAGraphRunner.capture

        def own_pool(self, fn):
            self._pool = None
            return capture(self, fn)

        CUDAGraphRunner.capture = own_pool
    if "tinyfirst" in modifiers or "tinyafter" in modifiers:
        from unifer_cuda.graphs import CUDAGraphRunner

        real = CUDAGraphRunner.capture
        tiny = []

        def capture_tiny():
            x = torch.zeros(1024, device="cuda")
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                x.add_(1)
            tiny.append((g, x))
            g.replay()

        def with_tiny(self, fn):
            if "tinyfirst" in modifiers and not tiny:
                capture_tiny()
            replay = real(self, fn)
            if "tinyafter" in modifiers:
                capture_tiny()
            return replay

        CUDAGraphRunner.capture = with_tiny
    if "asc" in modifiers:
        import unifer.engine.runner as runner

        runner.reversed = iter  # capture_decode_graphs walks the buckets with reversed()
    if "nopdl" in modifiers:
        from dependent_launch_cuda import set_dependent_launch

        set_dependent_launch(False)


def one(variant: str) -> None:
    import torch
    from model_cuda import decode_ms_per_token, make_checkpoint
    from unifer import LLM

    length, how, seqs = (variant + "/1").split("/")[:3]
    patch(how)
    folder = make_checkpoint(Path(tempfile.mkdtemp()) / "llama-1b-shape")
    llm = LLM(model=str(folder), backend="cuda", dtype="bfloat16", max_model_len=int(length),
              max_num_seqs=int(seqs))
    listed = [c for c, _ in llm.engine.runner._graphs[1]]
    rounds = [decode_ms_per_token(llm) for _ in range(3)]
    print(f"{variant:<18} graphs of bucket 1 at {listed}: engine step {min(s for s, _ in rounds):.4f} ms, replay "
          f"{min(r for _, r in rounds):.4f} ms ({torch.cuda.get_device_name()})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=VARIANTS)
    ap.add_argument("--one")
    args = ap.parse_args()
    if args.one:
        one(args.one)
        return
    for _ in range(2):
        for variant in args.variants.split(","):
            out = subprocess.run([sys.executable, __file__, "--one", variant], capture_output=True, text=True)
            print(out.stdout.strip() or f"{variant}: failed\n{out.stderr[-2000:]}", flush=True)


if __name__ == "__main__":
    main()
