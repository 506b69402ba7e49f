"""The engine over the cuda backend's KV-cache shape and ops table, in both layouts (UNIFER_CUDA_KV_LAYOUT), on CPU
tensors through Triton's interpreter: greedy tokens against transformers with chunked prefill, prefix caching and
preemption in one run, and a few of the conformance suite's op and attention cases. No GPU runs here, so this is
what shows that the engine, the suite, the backend's shape and its head-major kernels fit together.

The cases run in one child process with TRITON_INTERPRET set (tests/interpreter_harness.py says why).
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))  # tests/: the harness and checkpoints, also when run as the child script
sys.path.insert(0, str(HERE.parents[2] / "plugins" / "cuda" / "src"))  # where unifer_cuda is not installed
import interpreter_harness as harness  # noqa: E402

MAX_TOKENS = 6


def _prompts() -> list[list[int]]:
    rng = random.Random(5)
    prefix = [rng.randrange(4, 512) for _ in range(20)]
    return [prefix + [rng.randrange(4, 512) for _ in range(n)] for n in (3, 11, 25)] + [[7, 8, 9]]


def _cuda_tables_on_cpu(layout: str):
    """The CPU backend's device services with the cuda backend's cache shape and (interpreted) kernels."""
    from unifer_cpu import CPUBackend
    from unifer_cuda import CUDABackend
    from unifer_cuda.backend import KV_LAYOUT_ENV

    class CudaTablesOnCPU(CPUBackend):
        name = "cuda-tables-on-cpu"

        def __init__(self) -> None:
            super().__init__()
            self.cuda = CUDABackend()

        def kv_cache_shape(self, num_blocks, block_size, num_kv_heads, head_dim):
            return self.cuda.kv_cache_shape(num_blocks, block_size, num_kv_heads, head_dim)

        def native_ops(self):
            return self.cuda.native_ops()

    os.environ[KV_LAYOUT_ENV] = layout
    return CudaTablesOnCPU()


def _conformance_case(layout: str) -> None:
    """The suite's own runner on a few op and attention cases, split-KV decode among them, over the layout."""
    from unifer.backends import BackendRegistry
    from unifer_conformance.case import SuiteConfig
    from unifer_conformance.suite import run_suite

    registry = BackendRegistry()
    registry.add(_cuda_tables_on_cpu(layout))
    registry.probe_all()
    keyword = "write_kv/float16 or (decode or chunk or sliding_window) and /float16/ and h128 and not long_chunk"
    report = run_suite("cuda-tables-on-cpu", levels=("ops", "attention"), keyword=keyword,
                       config=SuiteConfig(seed=3), registry=registry)
    assert report["passed"], [c for c in report["cases"] if c["status"] != "PASS"]
    assert report["totals"]["PASS"] >= 10, report["totals"]


def _engine_case(layout: str) -> None:
    from checkpoints import make_checkpoint
    from hf_reference import hf_greedy
    from unifer import LLM, SamplingParams
    from unifer.engine import engine as engine_module

    backend = _cuda_tables_on_cpu(layout)
    assert backend.ops.paged_attention.__name__ == ("paged_attention_head_major" if layout == "HND"
                                                    else "paged_attention")
    folder = make_checkpoint(Path(tempfile.mkdtemp()) / "llama")
    prompts = _prompts()
    # 24-token budget: prompts prefill in chunks; 5 usable blocks of 8 for 4 prompts of up to 51 tokens: preemption;
    # 2 sequences at a time, so the later prompts find the shared 20-token prefix (2 full blocks) cached.
    with mock.patch.object(engine_module, "select_backend", lambda name: backend):
        llm = LLM(model=str(folder), backend="cpu", dtype="float32", block_size=8, max_num_batched_tokens=24,
                  num_blocks=9, max_num_seqs=2)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    expected = [tokens for tokens, _ in hf_greedy(folder, prompts, MAX_TOKENS)]
    assert [o.outputs[0].token_ids for o in outputs] == expected
    engine = llm.engine
    cache = engine.kv_caches[0]
    assert tuple(cache.shape[2:4]) == ((2, 8) if layout == "HND" else (8, 2)), tuple(cache.shape)
    assert engine.kv.prefix_hits > 0 and engine.scheduler.num_preemptions > 0
    assert engine.kv.num_free_blocks == engine.num_blocks - 1  # nothing leaked


def _all_cases() -> dict:
    # The token-major layout's conformance runs in CI through the rocm backend's interpreter mode, the same kernels.
    cases = {f"engine[{layout}]": (lambda layout=layout: _engine_case(layout)) for layout in ("NHD", "HND")}
    cases["conformance[HND]"] = lambda: _conformance_case("HND")
    return cases


CASE_NAMES = list(_all_cases())


def _child_main() -> None:
    from test_triton_interpret import _numpy_compat
    from unifer_rocm.interpret import patch_interpreter

    patch_interpreter()  # bfloat16 casts round as GPUs do, as the conformance tolerances expect
    _numpy_compat()
    harness.run_cases(_all_cases())


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    pytest.importorskip("transformers")
    return harness.interpreter_results(HERE)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_engine_with_cuda_tables_matches_transformers(interpreter_results, case):
    harness.check(interpreter_results, case)


if __name__ == "__main__":
    _child_main()
