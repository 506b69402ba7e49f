"""Batch-1 engine step against how the decode graphs are captured: how many graphs the process holds, their memory
pools and capture order, the split-KV segment count, programmatic dependent launch. Each variant runs in its own
process, twice, alternating; Llama-3.2-1B shape, bf16, random weights, contexts of 133-388 positions.

    python benchmarks/graph_capture_cuda.py [--variants 2048/plain,2048/plain/8,...|sizes] [--rounds 2]

A variant is ``max_model_len/how[/max_num_seqs[/graph_batch_sizes]][@rows]``:
- max_num_seqs: default 1, so that the batch-1 bucket's graph is the only one;
- graph_batch_sizes: joined by ``-``; default the engine's;
- rows: requests decoding together, default 1;
- how: ``plain`` (as the engine captures) or ``seg16`` (at most 16 split-KV segments), then modifiers, each after
  a ``+``:
  - ``pools``: each graph in its own memory pool;
  - ``nopdl``: without programmatic dependent launch;
  - ``asc``: buckets captured smallest first;
  - ``tinyfirst`` / ``tinyafter``: a one-kernel graph in its own pool, captured before the first decode graph /
    after each; ``tinydel``: ``tinyafter``, each tiny graph destroyed once replayed; ``tinynorep``: ``tinyafter``,
    never replayed; ``tinyrelaxed``: ``tinyafter`` captured in relaxed mode; ``tinyempty``: ``tinyafter`` with
    no kernel in the graph;
  - ``sidestream``: no second graph, but a kernel run eagerly on a new stream after each capture;
  - ``mallocafter`` / ``mallocfree``: after each capture, 256 MiB allocated by cudaMalloc and held / freed at once
    (kept in torch's cache); ``kernelafter``: a kernel run after each capture on the current stream;
  - ``samestream``: every capture warms up on one side stream, where the runner takes a new one per capture;
  - ``onecapture``: ``UNIFER_CUDA_ONE_CAPTURE=1``, so the graph runner makes one stream capture for all buckets
    and cuts it into a graph each (every variant without it sets the variable to 0, and every modifier but
    ``connN``, ``nopdl`` and ``asc``, which change ``capture``, forces one capture per graph);
  - ``streams``: each graph replayed on a stream of its own, ordered with the current one by events;
  - ``noempty``: no capture empties torch's device and pinned-host caches (``torch.cuda.graph`` does on entry);
    ``devempty`` / ``hostempty``: the device / pinned-host cache emptied after each capture;
  - ``ifnodes``: every bucket's step in one graph, each behind a conditional node that a one-hot device vector
    switches on, so the process holds a single graph executable;
  - ``connN``: CUDA_DEVICE_MAX_CONNECTIONS=N (hardware work queues; the driver's default is 8);
  - ``kept``: graphs captured with ``keep_graph=True``, so that each is instantiated only on its first replay
    (``oneexec``, one executable updated in place for every graph, is at 4ca8bba: raw/h100-graph-oneexec-59.txt).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

NAMED = {
    # Does the driver's hardware queue count change what a second graph costs? No (raw/h200-graph-connections-35.txt).
    "connections": "2048/plain/8,2048/plain+conn1/8,2048/plain+conn32/8,2048/plain+conn1",
    # Does one graph holding every bucket behind conditional nodes run as fast as a process's only graph? Needs a
    # torch whose CUDAGraph has begin_capture_to_if_node (2.13 has it; 2.11, on the lent H200s in December 2026,
    # has not).
    "ifnodes": "2048/plain,2048/plain/8,2048/plain/256,2048/plain+ifnodes,2048/plain+ifnodes/8,2048/plain+ifnodes/256",
    # What graph_batch_sizes=[1] gains at batch 1 and costs at batch 4 (eager there), against the engine's default.
    "sizes": "2048/plain/256,2048/plain/256/1,2048/plain/256@4,2048/plain/256/1@4",
    # Which kernel-to-kernel transitions lose their overlap, and which kinds of second capture cost.
    "transitions": "2048/plain,2048/plain/8,2048/plain+tinyafter,2048/plain+tinyrelaxed,2048/plain+tinyempty,"
                   "2048/plain+sidestream",
    # Is a cudaMalloc after a capture what costs? Does warming every bucket up on one stream avoid it?
    "malloc": "2048/plain,2048/plain/256,2048/plain+mallocafter,2048/plain+mallocfree,2048/plain+kernelafter,"
              "2048/plain+samestream/256,2048/plain+samestream/8",
    # The runner's one stream capture for all buckets (UNIFER_CUDA_ONE_CAPTURE=1) against one capture per bucket.
    "onecapture": "2048/plain,2048/plain+onecapture/256,2048/plain/256",
    # Is it the capture of a second graph that costs, or its instantiation?
    "kept": "2048/plain,2048/plain/256,2048/plain+kept/256",
}


def capture_kept(self, fn):
    """CUDAGraphRunner.capture for ``kept``: the graph is captured with ``keep_graph=True``, so it is instantiated
    on its first replay."""
    import torch

    self._warm_up([fn])
    graph = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(graph, pool=self._pool):
        out = fn()
    if self._pool is None:
        self._pool = graph.pool()
    self.graphs.append(graph)

    def replay():
        graph.replay()
        return out

    return replay


def capture_into_one(self, fn):
    """CUDAGraphRunner.capture for ``ifnodes``: warm ``fn`` up now; on the first replay, capture every ``fn`` given
    so far into one graph, each inside a conditional node whose predicate is its row of a one-hot device vector."""
    import torch

    for _ in range(self.warmup_runs):  # compiles the Triton kernels before any capture
        fn()
    torch.cuda.synchronize()
    fns = self.__dict__.setdefault("fns", [])
    k = len(fns)
    fns.append(fn)

    def build():
        n = len(fns)
        self.onehots = torch.eye(n, dtype=torch.bool, device="cuda")
        self.select = torch.zeros(n, dtype=torch.bool, device="cuda")
        self.one, self.outs = torch.cuda.CUDAGraph(), []
        with torch.cuda.graph(self.one):
            for j, f in enumerate(fns):
                self.one.begin_capture_to_if_node(self.select[j])
                self.outs.append(f())
                self.one.end_capture_to_conditional_node()

    def replay():
        if not hasattr(self, "one"):
            build()
        self.select.copy_(self.onehots[k])
        self.one.replay()
        return self.outs[k]

    return replay


RUNNERS: list = []


def patch(variant: str) -> None:
    import torch
    import unifer.kernels.triton.attention as attention
    from unifer_cuda.graphs import CUDAGraphRunner

    how, *modifiers = variant.split("+")
    init = CUDAGraphRunner.__init__

    def kept(self, *a, init=init, **kw):  # so one() can count the stream captures (each adds to .graphs)
        init(self, *a, **kw)
        RUNNERS.append(self)

    CUDAGraphRunner.__init__ = kept
    # Explicit either way: plain variants keep meaning one capture per bucket, as in the raw logs before it.
    os.environ["UNIFER_CUDA_ONE_CAPTURE"] = "1" if "onecapture" in modifiers else "0"
    if set(modifiers) - {"nopdl", "asc", "onecapture"} - {m for m in modifiers if m.startswith("conn")}:
        CUDAGraphRunner.capture_many = lambda self, fns: [self.capture(fn) for fn in fns]
    for m in modifiers:
        if m.startswith("conn"):  # read when the CUDA context is made, which no import here does
            os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] = m[4:]
    if how == "seg16":
        choose = attention.choose_num_segments
        attention.choose_num_segments = lambda *a, **kw: min(choose(*a, **kw), 16)
    if "pools" in modifiers:
        capture = CUDAGraphRunner.capture

        def own_pool(self, fn, capture=capture):
            self._pool = None
            return capture(self, fn)

        CUDAGraphRunner.capture = own_pool
    if {"tinyfirst", "tinyafter", "tinydel", "tinynorep", "tinyrelaxed", "tinyempty"} & set(modifiers):
        tiny, capture = [], CUDAGraphRunner.capture

        def capture_tiny():
            x = torch.zeros(1024, device="cuda")
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, capture_error_mode="relaxed" if "tinyrelaxed" in modifiers else "global"):
                if "tinyempty" not in modifiers:
                    x.add_(1)
            if "tinynorep" not in modifiers:
                g.replay()
            if "tinydel" in modifiers:
                torch.cuda.synchronize()
                g.reset()
            else:
                tiny.append((g, x))

        def with_tiny(self, fn, capture=capture):
            if "tinyfirst" in modifiers and not self.graphs:
                capture_tiny()
            replay = capture(self, fn)
            if {"tinyafter", "tinydel", "tinynorep", "tinyrelaxed", "tinyempty"} & set(modifiers):
                capture_tiny()
            return replay

        CUDAGraphRunner.capture = with_tiny
    if "sidestream" in modifiers:
        capture = CUDAGraphRunner.capture

        def then_side_stream(self, fn, capture=capture):
            replay = capture(self, fn)
            x, side = torch.zeros(1024, device="cuda"), torch.cuda.Stream()
            with torch.cuda.stream(side):
                x.add_(1)
            torch.cuda.synchronize()
            return replay

        CUDAGraphRunner.capture = then_side_stream
    if {"mallocafter", "mallocfree", "kernelafter"} & set(modifiers):
        capture, held = CUDAGraphRunner.capture, []

        def then_malloc(self, fn, capture=capture):
            if "scratch" not in self.__dict__:  # before any capture, so that the kernel after one allocates nothing
                self.scratch = torch.zeros(1024, device="cuda")
            replay = capture(self, fn)
            if "kernelafter" in modifiers:
                self.scratch.add_(1)
            else:  # larger than any cached free block, so the allocator calls cudaMalloc
                block = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
                if "mallocafter" in modifiers:
                    held.append(block)
            torch.cuda.synchronize()
            return replay

        CUDAGraphRunner.capture = then_malloc
    if "samestream" in modifiers:
        capture = CUDAGraphRunner.capture

        def on_one_warmup_stream(self, fn, capture=capture):
            stream = self.__dict__.setdefault("warmup_stream", torch.cuda.Stream())
            make, torch.cuda.Stream = torch.cuda.Stream, lambda *a, **kw: stream
            try:
                return capture(self, fn)
            finally:
                torch.cuda.Stream = make

        CUDAGraphRunner.capture = on_one_warmup_stream
    if "streams" in modifiers:
        capture = CUDAGraphRunner.capture

        def on_own_stream(self, fn, capture=capture):
            replay, stream = capture(self, fn), torch.cuda.Stream()

            def run():
                current = torch.cuda.current_stream()
                stream.wait_stream(current)
                with torch.cuda.stream(stream):
                    out = replay()
                current.wait_stream(stream)
                return out

            return run

        CUDAGraphRunner.capture = on_own_stream
    if "kept" in modifiers:
        CUDAGraphRunner.capture = capture_kept
    if "ifnodes" in modifiers:
        if not hasattr(torch.cuda.CUDAGraph, "begin_capture_to_if_node"):
            raise SystemExit(f"ifnodes: torch {torch.__version__} cannot capture into conditional nodes")
        CUDAGraphRunner.capture = capture_into_one
    if {"devempty", "hostempty"} & set(modifiers):
        capture = CUDAGraphRunner.capture

        def then_empty(self, fn, capture=capture):
            replay = capture(self, fn)
            if "devempty" in modifiers:
                torch.cuda.empty_cache()
            if "hostempty" in modifiers:
                torch._C._host_emptyCache()
            return replay

        CUDAGraphRunner.capture = then_empty
    if "noempty" in modifiers:  # last, so that it also covers the tiny graphs' captures
        capture = CUDAGraphRunner.capture

        def without_emptying(self, fn, capture=capture):
            saved = torch.cuda.empty_cache, torch._C._host_emptyCache
            torch.cuda.empty_cache = torch._C._host_emptyCache = lambda: None
            try:
                return capture(self, fn)
            finally:
                torch.cuda.empty_cache, torch._C._host_emptyCache = saved

        CUDAGraphRunner.capture = without_emptying
    if "asc" in modifiers:
        import unifer.engine.runner as runner

        runner.reversed = iter  # _decode_steps walks the buckets with reversed()
    if "nopdl" in modifiers:
        from dependent_launch_cuda import set_dependent_launch

        set_dependent_launch(False)


def short(name: str) -> str:
    for key, label in (("split", "gemm-splitK"), ("nvjet", "gemm"), ("gemv", "gemv"), ("splitKreduce", "reduce"),
                       ("reduce_segments", "merge"), ("reduce", "reduce"), ("unified_attention", "attention"),
                       ("rms", "rmsnorm"), ("rotary", "rotary+kv"), ("silu", "silu"), ("argmax", "argmax")):
        if key in name.lower():
            return label
    return name[:24]


def transitions(replay, replays: int = 30) -> str:
    """Per kind of kernel-to-kernel transition in a replay: the summed gap (next start - previous end; negative
    where programmatic dependent launch overlaps them), in µs per replay."""
    from decode_profile_cuda import profiled

    prof = profiled(replay, replays)
    kernels = sorted((e.time_range.start, e.time_range.end, short(e.name)) for e in prof.events()
                     if e.device_type.name == "CUDA")
    gaps: dict[tuple[str, str], list[float]] = {}
    for (_, end, a), (start, _, b) in zip(kernels, kernels[1:], strict=False):
        if start - end < 50:  # within a replay, not the host's gap between two
            gaps.setdefault((a, b), []).append(start - end)
    rows = sorted(gaps.items(), key=lambda kv: sum(kv[1]))
    return "; ".join(f"{a}->{b} {sum(g) / replays:+.1f} us ({len(g) // replays})" for (a, b), g in rows)


def one(variant: str) -> None:
    import torch
    from decode_profile_cuda import kernel_times
    from model_cuda import decode_ms_per_token, make_checkpoint
    from unifer import LLM

    spec, _, rows = variant.partition("@")
    parts = spec.split("/")
    length, how, seqs, *sizes = parts + ["1"] * (3 - len(parts))
    patch(how)
    folder = make_checkpoint(Path(tempfile.mkdtemp()) / "llama-1b-shape")
    llm = LLM(model=str(folder), backend="cuda", dtype="bfloat16", max_model_len=int(length),
              max_num_seqs=int(seqs), graph_batch_sizes=[int(b) for b in sizes[0].split("-")] if sizes else None)
    segments = torch.cuda.memory_stats()["segment.all.allocated"]
    rounds = [decode_ms_per_token(llm, rows=int(rows or 1)) for _ in range(3)]
    more = torch.cuda.memory_stats()["segment.all.allocated"] - segments
    segments = f"{segments} cudaMalloc calls at start-up, {more} more in the rounds"
    print(f"{variant:<22} engine step {min(s for s, _ in rounds):.4f} ms, replay {min(r for _, r in rounds):.4f} ms "
          f"({len(llm.engine.runner.graph_buckets)} decode graphs, {sum(len(r.graphs) for r in RUNNERS)} stream "
          f"captures; {segments}; {torch.cuda.get_device_name()})",
          flush=True)
    # Whether the time goes to slower kernels or to longer gaps between them.
    kernels = sorted(kernel_times(llm.engine.runner._graphs[1], 30).items(), key=lambda kv: -kv[1][0])
    print(f"    kernels busy {sum(us for _, (us, _) in kernels) / 1e3:.4f} ms per replay; "
          + "; ".join(f"{us:.1f} us x{n} {name[:40]}" for name, (us, n) in kernels[:5]), flush=True)
    print(f"    gaps {transitions(llm.engine.runner._graphs[1])}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="connections", help=f"comma-separated, or one of {', '.join(NAMED)}")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--one")
    args = ap.parse_args()
    if args.one:
        one(args.one)
        return
    variants = NAMED.get(args.variants, args.variants)
    for _ in range(args.rounds):
        for variant in variants.split(","):
            out = subprocess.run([sys.executable, __file__, "--one", variant], capture_output=True, text=True)
            print(out.stdout.strip() or f"{variant}: failed\n{out.stderr[-2000:]}", flush=True)
            for line in out.stderr.splitlines():  # the graph runner's fallback, were the one capture refused
                if "one by one" in line:
                    print(f"    {line}", flush=True)


if __name__ == "__main__":
    main()
