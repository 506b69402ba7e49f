"""Each fused op of the ops table against its composite (the same op run as its parts), in the captured batch-1
decode step (Llama-3.2-1B shape, bf16, random weights, 256-token context), timed in the same run.

The composite is what a backend without the fused kernel runs (``unifer.ops.table.COMPOSITES``). Both graphs
must give bit-identical logits. Graph-replay medians (triton.testing.do_bench), best of three alternating rounds.

    python benchmarks/fusion_cuda.py
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch
import triton.testing
from model_cuda import copy_bandwidth, make_checkpoint, single_decode_step, weight_bytes


def use_ops(model: torch.nn.Module, ops) -> None:
    for module in model.modules():
        if hasattr(module, "ops"):
            module.ops = ops


def main() -> None:
    from unifer import LLM
    from unifer.ops.table import COMPOSITES

    folder = make_checkpoint(Path(tempfile.mkdtemp()) / "llama-1b-shape")
    llm = LLM(model=str(folder), backend="cuda", dtype="bfloat16", max_model_len=2048, max_num_seqs=1)
    model, capture = single_decode_step(llm, context=256)
    fused = llm.engine.backend.ops
    roofline = weight_bytes(llm) / copy_bandwidth() * 1e3
    print(f"device: {torch.cuda.get_device_name()}; roofline {roofline:.3f} ms per token")
    for name, (parts, build) in COMPOSITES.items():
        if name not in fused.native:
            print(f"{name}: the backend has no fused kernel")
            continue
        composite = dataclasses.replace(fused, **{name: build(*(getattr(fused, p) for p in parts))})
        best, logits = {}, {}
        for _ in range(3):
            for label, ops in (("parts", composite), ("fused", fused)):
                use_ops(model, ops)
                replay = capture()
                logits[label] = replay().clone()
                ms = triton.testing.do_bench(replay, warmup=20, rep=300, return_mode="median")
                best[label] = min(best.get(label, ms), ms)
        use_ops(model, fused)
        same = torch.equal(logits["parts"], logits["fused"])
        print(f"{name} (fused) against {' + '.join(parts)}: replay {best['fused']:.4f} ms against "
              f"{best['parts']:.4f} ms, {best['parts'] / best['fused']:.3f}x; {roofline / best['fused']:.1%} "
              f"against {roofline / best['parts']:.1%} of the roofline; logits "
              f"{'bit-identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
