"""``unifer serve`` and ``unifer bench serve``: argument parsers and their commands.

Heavy imports (torch via the engine, FastAPI, uvicorn, httpx) happen inside the commands, so ``unifer --help``
stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time

MAX_BENCH_REQUESTS = 100_000  # a bound, so a typo cannot start an endless load test


# serve ----------------------------------------------------------------------------------------------------------
def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve a checkpoint over an OpenAI-compatible HTTP API")
    p.add_argument("model", help="local Hugging Face checkpoint folder")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: env UNIFER_API_KEY)")
    p.add_argument("--served-model-name", default=None, help="the name clients send as 'model' (default: MODEL)")
    p.add_argument("--chat-template", default=None, metavar="FILE_OR_TEMPLATE",
                   help="a jinja2 chat template (a file, or the template itself) in place of the checkpoint's")
    p.add_argument("--backend", default=None)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=256, help="most requests in the running batch")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048, help="token budget of one step")
    p.add_argument("--max-waiting", type=int, default=1024,
                   help="most requests waiting for a batch slot; beyond it requests get 503 + Retry-After")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-blocks", type=int, default=None, help="KV-cache blocks (default: from memory)")
    p.add_argument("--memory-fraction", "--gpu-memory-utilization", dest="memory_fraction", type=float, default=0.9,
                   help="share of device memory the engine may use (weights, activations, KV cache)")
    p.add_argument("--enforce-eager", action="store_true", help="never capture or replay graphs")
    p.add_argument("--graph-batch-sizes", "--cuda-graph-sizes", dest="graph_batch_sizes", type=int, nargs="+",
                   default=None, metavar="N",
                   help="decode batch sizes to capture graphs for (default: 1 2 4 8 16 ... up to --max-num-seqs, "
                        "at most 256); a larger decode batch runs eagerly, many times slower")
    p.add_argument("--mixed-graph-sizes", type=int, nargs="+", default=None, metavar="N",
                   help="token counts to capture graphs for steps with prefill tokens (default: none, those steps "
                        "run eagerly); a step is padded to the next size, a larger one runs eagerly")
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="launch each step before reading the last one's tokens (default: where the backend can)")
    p.add_argument("--max-cache-bytes", type=int, default=None)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from unifer.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
    from unifer.engine.async_engine import AsyncLLMEngine
    from unifer.engine.engine import LLMEngine
    from unifer.server.app import build_app
    from unifer.server.chat import load_chat_template

    chat_template = load_chat_template(args.chat_template) if args.chat_template else None  # before the model loads
    config = EngineConfig(
        model=ModelConfig(model=args.model, dtype=args.dtype, max_model_len=args.max_model_len, seed=args.seed),
        cache=CacheConfig(block_size=args.block_size, num_blocks=args.num_blocks,
                          memory_fraction=args.memory_fraction, max_cache_bytes=args.max_cache_bytes,
                          enable_prefix_caching=not args.no_prefix_caching),
        scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens),
        backend=args.backend, enforce_eager=args.enforce_eager, graph_batch_sizes=args.graph_batch_sizes,
        mixed_graph_sizes=args.mixed_graph_sizes, async_scheduling=args.async_scheduling)
    engine = AsyncLLMEngine(LLMEngine(config), max_waiting=args.max_waiting)
    api_key = args.api_key or os.environ.get("UNIFER_API_KEY") or None
    app = build_app(engine, args.served_model_name or args.model, api_key=api_key,
                    max_body_bytes=args.max_body_bytes, chat_template=chat_template)
    print(f"unifer serve: {args.model} on backend {engine.engine.backend.name}, max_model_len "
          f"{engine.max_model_len}, {engine.engine.num_blocks} KV blocks, auth {'on' if api_key else 'off'}",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


# bench serve ----------------------------------------------------------------------------------------------------
def add_bench_parser(subparsers):
    """Adds ``bench`` with its ``serve`` sub-command; returns bench's subparsers so others can add siblings."""
    bench = subparsers.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    add_bench_serve_parser(bench_sub)
    return bench_sub


def add_bench_serve_parser(bench_subparsers) -> argparse.ArgumentParser:
    p = bench_subparsers.add_parser("serve", help="load a running server with Poisson arrivals; report "
                                                  "throughput and TTFT / ITL percentiles")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    p.add_argument("--model", default=None, help="model name (default: the server's first /v1/models entry)")
    p.add_argument("--api-key", default=None, help="default: env UNIFER_API_KEY")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--request-rate", type=float, default=float("inf"),
                   help="mean arrivals per second (Poisson); inf sends all at once")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--input-words", type=int, default=32, help="words per random prompt")
    p.add_argument("--output-len", type=int, default=64, help="max_tokens, with ignore_eos so all reach it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_bench_serve)
    return p


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def _summary(name: str, values: list[float]) -> dict:
    mean = sum(values) / len(values) if values else float("nan")
    return {f"{name}_mean_ms": mean * 1e3, f"{name}_p50_ms": _pct(values, 50) * 1e3,
            f"{name}_p90_ms": _pct(values, 90) * 1e3, f"{name}_p99_ms": _pct(values, 99) * 1e3}


async def _one(client, url: str, body: dict, headers: dict, result: dict) -> None:
    start = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                result["error"] = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    result["prompt_tokens"] = chunk["usage"]["prompt_tokens"]
                    result["output_tokens"] = chunk["usage"]["completion_tokens"]
                if not chunk.get("choices"):
                    continue
                now = time.perf_counter()
                if last is None:
                    result["ttft"] = now - start
                else:
                    result.setdefault("itl", []).append(now - last)
                last = now
        result["latency"] = time.perf_counter() - start
    except Exception as e:  # reported per request; the run goes on
        result["error"] = f"{type(e).__name__}: {e}"


async def _bench(args: argparse.Namespace) -> dict:
    import httpx
    from tqdm.auto import tqdm

    api_key = args.api_key or os.environ.get("UNIFER_API_KEY")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = args.url.rstrip("/")
    rng = random.Random(args.seed)
    words = ("the a of to in is it that for on with as was at by be this from or are not have but what all were "
             "when we there can your which their said if will each about how up out them then she many some so "
             "model token engine cache block attention sample stream batch prompt stop text byte hello world").split()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as client:
        model = args.model
        if model is None:
            resp = await client.get(f"{url}/v1/models", headers=headers)
            resp.raise_for_status()
            model = resp.json()["data"][0]["id"]
        gate = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
        results: list[dict] = [{} for _ in range(args.num_prompts)]
        bar = tqdm(total=args.num_prompts, desc="bench serve", unit="req")

        async def run(i: int) -> None:
            body = {"model": model, "prompt": " ".join(rng.choice(words) for _ in range(args.input_words)),
                    "max_tokens": args.output_len, "temperature": 0.0, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            if gate is None:
                await _one(client, url, body, headers, results[i])
            else:
                async with gate:
                    await _one(client, url, body, headers, results[i])
            bar.update(1)

        tasks = []
        start = time.perf_counter()
        for i in range(args.num_prompts):
            tasks.append(asyncio.ensure_future(run(i)))
            if args.request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(args.request_rate))
        await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
        bar.close()
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    out_tokens = sum(r.get("output_tokens", 0) for r in ok)
    in_tokens = sum(r.get("prompt_tokens", 0) for r in ok)
    summary = {"model": model, "num_prompts": args.num_prompts, "request_rate": args.request_rate,
               "completed": len(ok), "failed": len(errors), "duration_s": duration,
               "request_throughput": len(ok) / duration, "output_token_throughput": out_tokens / duration,
               "total_token_throughput": (in_tokens + out_tokens) / duration,
               "prompt_tokens": in_tokens, "output_tokens": out_tokens}
    summary.update(_summary("ttft", [r["ttft"] for r in ok if "ttft" in r]))
    summary.update(_summary("itl", [x for r in ok for x in r.get("itl", [])]))
    summary.update(_summary("e2e", [r["latency"] for r in ok]))
    if errors:
        summary["first_errors"] = errors[:3]
    return summary


def cmd_bench_serve(args: argparse.Namespace) -> int:
    if not 1 <= args.num_prompts <= MAX_BENCH_REQUESTS:
        raise ValueError(f"--num-prompts must be in 1..{MAX_BENCH_REQUESTS}")
    if args.request_rate <= 0:
        raise ValueError("--request-rate must be positive")
    summary = asyncio.run(_bench(args))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"completed {summary['completed']}/{summary['num_prompts']} requests in {summary['duration_s']:.2f} s "
              f"(rate {summary['request_rate']}/s, failed {summary['failed']})")
        print(f"throughput: {summary['request_throughput']:.2f} req/s, {summary['output_token_throughput']:.1f} "
              f"output tok/s, {summary['total_token_throughput']:.1f} total tok/s")
        for name in ("ttft", "itl", "e2e"):
            print(f"{name.upper():>4} ms: mean {summary[f'{name}_mean_ms']:.1f}  p50 {summary[f'{name}_p50_ms']:.1f}  "
                  f"p90 {summary[f'{name}_p90_ms']:.1f}  p99 {summary[f'{name}_p99_ms']:.1f}")
        for e in summary.get("first_errors", []):
            print(f"error: {e}")
    return 0 if summary["failed"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m unifer.server.cli serve|bench ...``: the same commands without the top-level CLI."""
    import sys

    parser = argparse.ArgumentParser(prog="unifer")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    add_bench_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"unifer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
