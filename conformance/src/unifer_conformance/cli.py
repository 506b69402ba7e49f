"""``unifer conformance``: core's CLI calls :func:`add_parser`; ``python -m unifer_conformance.cli`` works alone.

Only argparse is imported here: building the parser must stay cheap (core builds it for every command).
"""

from __future__ import annotations

import argparse
import json
import sys

LEVEL_NAMES = ("ops", "attention", "sampling", "e2e")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "conformance", help="run the conformance suite against a backend (exit 0 only if every case passes)",
        description="Run the unifer conformance suite against one backend; write a JSON and/or Markdown report.")
    configure(p)
    return p


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", required=True, help="backend name, as listed by `unifer backends`")
    p.add_argument("--report", metavar="FILE.json", help="write the JSON report here")
    p.add_argument("--markdown", metavar="FILE.md", help="write the Markdown summary here ('-' for stdout)")
    p.add_argument("--levels", default=",".join(LEVEL_NAMES),
                   help=f"comma-separated subset of {','.join(LEVEL_NAMES)} (default: all)")
    p.add_argument("--perf", action="store_true", help="time attention cases; report GB/s and GFLOP/s (not judged)")
    p.add_argument("--seed", type=int, default=0, help="suite seed; every case derives its inputs from it")
    p.add_argument("--property-examples", type=int, default=50, help="hypothesis examples per property case")
    p.add_argument("-k", dest="keyword", metavar="EXPR", help="pytest -k expression over case ids")
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures and the totals")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unifer_conformance import report
    from unifer_conformance.case import SuiteConfig
    from unifer_conformance.suite import run_suite

    levels = tuple(x.strip() for x in args.levels.split(",") if x.strip())
    config = SuiteConfig(seed=args.seed, perf=args.perf, property_examples=args.property_examples)

    def progress(row: dict) -> None:
        if args.quiet and row["status"] not in ("FAIL", "ERROR"):
            return
        first = row["message"].splitlines()[0] if row["message"] else ""
        print(f"{row['status']:14} {row['id']}  {first[:160]}", file=sys.stderr, flush=True)

    result = run_suite(args.backend, levels=levels, keyword=args.keyword, config=config, progress=progress)
    if args.report:
        with open(args.report, "w") as f:
            json.dump(result, f, indent=1)
    md = report.markdown(result)
    if args.markdown == "-":
        print(md)
    elif args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    t = result["totals"]
    print(f"{args.backend}: {t['PASS']} passed, {t['FAIL']} failed, {t['ERROR']} errors, "
          f"{t['NOT_APPLICABLE']} not applicable ({result['run']['duration_s']:.1f} s) -> "
          f"{'PASSED' if result['passed'] else 'FAILED'}", file=sys.stderr)
    return report.exit_code(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unifer-conformance")
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError) as exc:  # unknown backend or level: a usage error, not a failed suite
        print(f"unifer conformance: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
