"""The ``unifer`` command line."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_backends(args: argparse.Namespace) -> int:
    from unifer.backends.registry import discover

    registry = discover()
    rows = []
    for entry in registry.entries():
        b = entry.backend
        ops = {}
        if entry.availability.ok:
            try:
                table = b.ops
                ops = {name: table.source(name) for name in sorted(_op_names())}
            except Exception as exc:  # a broken ops table is reported like any other plugin fault
                ops = {"error": f"{type(exc).__name__}: {exc}"}
        rows.append({
            "name": b.name, "plugin": entry.plugin, "available": entry.availability.ok,
            "reason": entry.availability.reason, "priority": b.priority, "device_type": b.device_type,
            "api_version": b.api_version, "version": b.version,
            "capabilities": b.capabilities.model_dump(mode="json"), "ops": ops,
        })
    failures = [{"plugin": f.plugin, "stage": f.stage, "error": f.error} for f in registry.failures]
    if args.json:
        print(json.dumps({"backends": rows, "failed_plugins": failures}, indent=2))
        return 0
    for r in rows:
        state = "available" if r["available"] else "unavailable"
        print(f"{r['name']} (plugin {r['plugin']}, priority {r['priority']}, api {r['api_version']}): {state}"
              f" - {r['reason']}")
        caps = r["capabilities"]
        print(f"  dtypes {', '.join(caps['dtypes'])}; head sizes {caps['head_sizes']}; block sizes "
              f"{caps['block_sizes']}; max GQA {caps['max_gqa_ratio']}; sliding window {caps['sliding_window']}; "
              f"soft-cap {caps['logit_soft_cap']}; graphs {caps['graph_capture']}; comm {caps['communicator']}")
        if caps["extra"]:
            print("  extra: " + "; ".join(f"{k} {v}" for k, v in caps["extra"].items()))
        if r["ops"]:
            print("  ops: " + ", ".join(f"{k}={v}" for k, v in r["ops"].items()))
    for f in failures:
        print(f"plugin {f['plugin']} skipped ({f['stage']}): {f['error']}")
    if not rows and not failures:
        print("no backend plugin found; install one, e.g. pip install 'unifer[cpu]'")
    return 0


def _op_names():
    from unifer.ops.table import OP_NAMES

    return OP_NAMES


def _cmd_generate(args: argparse.Namespace) -> int:
    from unifer import LLM, SamplingParams

    llm = LLM(model=args.model, backend=args.backend, dtype=args.dtype, max_model_len=args.max_model_len)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, stop=args.stop or None, ignore_eos=args.ignore_eos)
    prompts = args.prompt or [sys.stdin.read()]
    for out in llm.generate(prompts, params, use_tqdm=False):
        if len(prompts) > 1:
            print(f"--- {out.prompt!r}")
        print(out.outputs[0].text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unifer", description="A universal LLM inference engine.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backends", help="list discovered backends, their availability, capabilities and ops")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_backends)

    p = sub.add_parser("generate", help="generate text for prompts with a local checkpoint")
    p.add_argument("--model", required=True, help="local Hugging Face checkpoint folder")
    p.add_argument("--backend", default=None)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("prompt", nargs="*", help="prompts (read from stdin when none)")
    p.set_defaults(func=_cmd_generate)

    from unifer.server.cli import add_bench_parser, add_serve_parser

    add_serve_parser(sub)
    add_bench_parser(sub)
    _add_conformance_parser(sub)
    return parser


def _add_conformance_parser(sub) -> None:
    try:  # the suite is its own distribution; the command exists either way and says how to get it
        from unifer_conformance.cli import add_parser
    except ImportError:
        p = sub.add_parser("conformance", help="run the conformance suite (needs unifer-conformance)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda _args: _missing_conformance())
        return
    add_parser(sub)


def _missing_conformance() -> int:
    print("unifer conformance: the suite is not installed; pip install unifer-conformance", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"unifer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
