"""The report: one JSON document (schema in README.md, versioned by REPORT_SCHEMA_VERSION) and its Markdown."""

from __future__ import annotations

import math
import platform
import sys
from collections import Counter
from importlib import metadata

from unifer_conformance import REPORT_SCHEMA_VERSION, __version__
from unifer_conformance.case import Case, Result, Status


def _num(x):
    """JSON has no inf/NaN: write them as strings so the report stays standard JSON."""
    if x is None or (isinstance(x, float) and math.isfinite(x)) or isinstance(x, int):
        return x
    return str(x)


def case_row(case: Case, result: Result, seed: int, seconds: float) -> dict:
    return {
        "id": case.id, "level": case.level, "status": result.status.value,
        "max_abs_err": _num(result.max_abs_err), "tol_abs": _num(result.tol_abs),
        "nse": _num(result.nse), "tol_nse": _num(result.tol_nse),
        "message": result.message, "seed": seed, "seconds": round(seconds, 6),
        "params": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                   for k, v in case.params.items()},
        "perf": result.perf, **({"extra": result.extra} if result.extra else {}),
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(backend) -> dict:
    import torch

    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
        "torch": torch.__version__, "unifer": _version("unifer"), "suite": __version__,
        "hypothesis": _version("hypothesis"), "transformers": _version("transformers"),
        "torch_cuda": getattr(torch.version, "cuda", None), "torch_hip": getattr(torch.version, "hip", None),
    }


def backend_info(backend) -> dict:
    try:
        device = backend.device_name()
    except Exception as exc:  # noqa: BLE001  (reported, not fatal)
        device = f"<device_name raised {type(exc).__name__}: {exc}>"
    return {"name": backend.name, "version": backend.version, "api_version": backend.api_version,
            "device_type": backend.device_type, "device": device, "priority": backend.priority,
            "capabilities": backend.capabilities.model_dump(mode="json")}


def build(backend, rows: list[dict], *, config, levels, keyword, duration: float) -> dict:
    from unifer.backends import API_VERSION
    from unifer.ops.table import OP_NAMES

    totals = Counter(r["status"] for r in rows)
    failed = totals[Status.FAIL.value] + totals[Status.ERROR.value]
    return {
        "schema": "unifer-conformance-report", "schema_version": REPORT_SCHEMA_VERSION,
        "suite_version": __version__, "contract_api_version": API_VERSION,
        "backend": backend_info(backend), "environment": environment(backend),
        "run": {"seed": config.seed, "levels": list(levels), "keyword": keyword, "perf": config.perf,
                "property_examples": config.property_examples, "duration_s": round(duration, 3)},
        "coverage": {name: backend.ops.source(name) for name in OP_NAMES},
        "totals": {s.value: totals[s.value] for s in Status} | {"total": len(rows)},
        "passed": failed == 0 and len(rows) > 0,
        "cases": rows,
    }


def exit_code(report: dict) -> int:
    """0 only when every applicable case passed (and at least one case ran)."""
    return 0 if report["passed"] else 1


def _fmt(x) -> str:
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    return f"{x:.2e}"


def markdown(report: dict, *, all_cases: bool = False) -> str:
    """A summary a vendor can publish: header, totals, coverage, every failure, then (optionally) every case."""
    b, env, t = report["backend"], report["environment"], report["totals"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines = [
        f"# unifer conformance: `{b['name']}` {b['version']} — {verdict}", "",
        f"- device: {b['device']} (`{b['device_type']}`)",
        f"- contract api_version: backend {b['api_version']}, core {report['contract_api_version']}",
        f"- suite {report['suite_version']} (report schema {report['schema_version']}), unifer {env['unifer']}, "
        f"torch {env['torch']}, python {env['python']}, {env['platform']}",
        f"- seed {report['run']['seed']} (rerun one case: `unifer conformance --backend {b['name']} "
        f"--seed {report['run']['seed']} -k CASE_ID`), levels {', '.join(report['run']['levels'])}, "
        f"{report['run']['duration_s']:.1f} s", "",
        "| PASS | FAIL | ERROR | NOT_APPLICABLE | total |", "|---:|---:|---:|---:|---:|",
        f"| {t['PASS']} | {t['FAIL']} | {t['ERROR']} | {t['NOT_APPLICABLE']} | {t['total']} |", "",
        "Op coverage: " + ", ".join(f"`{k}` {v}" for k, v in report["coverage"].items()), "",
    ]
    by_level: dict[str, Counter] = {}
    for r in report["cases"]:
        by_level.setdefault(r["level"], Counter())[r["status"]] += 1
    lines += ["| level | PASS | FAIL | ERROR | NOT_APPLICABLE |", "|---|---:|---:|---:|---:|"]
    for level, c in by_level.items():
        lines.append(f"| {level} | {c['PASS']} | {c['FAIL']} | {c['ERROR']} | {c['NOT_APPLICABLE']} |")
    bad = [r for r in report["cases"] if r["status"] in ("FAIL", "ERROR")]
    if bad:
        lines += ["", "## Failures", "", "| case | status | max abs err / tol | nse / tol | message |",
                  "|---|---|---|---|---|"]
        for r in bad:
            msg = r["message"].splitlines()[0] if r["message"] else ""
            lines.append(f"| `{r['id']}` | {r['status']} | {_fmt(r['max_abs_err'])} / {_fmt(r['tol_abs'])} | "
                         f"{_fmt(r['nse'])} / {_fmt(r['tol_nse'])} | {msg.replace('|', '/')} |")
    perf = [r for r in report["cases"] if r.get("perf")]
    if perf:
        lines += ["", "## Attention performance (reported, never judged)", "",
                  "| case | ms | GB/s | GFLOP/s |", "|---|---:|---:|---:|"]
        for r in perf:
            p = r["perf"]
            lines.append(f"| `{r['id']}` | {p['seconds'] * 1e3:.3f} | {p['GB_per_s']:.2f} | {p['GFLOP_per_s']:.2f} |")
    if all_cases:
        lines += ["", "## All cases", "", "| case | status | max abs err / tol | nse / tol | seed |",
                  "|---|---|---|---|---|"]
        for r in report["cases"]:
            lines.append(f"| `{r['id']}` | {r['status']} | {_fmt(r['max_abs_err'])} / {_fmt(r['tol_abs'])} | "
                         f"{_fmt(r['nse'])} / {_fmt(r['tol_nse'])} | {r['seed']} |")
    na = [r for r in report["cases"] if r["status"] == "NOT_APPLICABLE"]
    if na and not all_cases:
        reasons = Counter(r["message"] for r in na)
        lines += ["", "## Not applicable (outside the declared Capabilities)", ""]
        lines += [f"- {n} case(s): {why}" for why, n in reasons.most_common()]
    return "\n".join(lines) + "\n"
