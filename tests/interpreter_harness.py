"""Runs Triton kernel cases in Triton's CPU interpreter, one child process per test module.

TRITON_INTERPRET must be set before the kernels are decorated and must not leak into other tests (the AOT compile
checks need real JIT functions), so a module's cases run in ONE child: the test file executed as a script, with
the variable set, printing one JSON line per case. The pytest side reports each case separately.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest


def run_cases(cases: dict[str, Callable[[], float | None]]) -> None:
    """Child side: run every case, print ``CASE {json}`` for each (its error or its traceback)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("run with TRITON_INTERPRET=1 (pytest does so)")
    for name, fn in cases.items():
        start = time.perf_counter()
        try:
            result = {"case": name, "ok": True, "error": fn()}
        except Exception:
            result = {"case": name, "ok": False, "traceback": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - start, 2)
        print("CASE " + json.dumps(result), flush=True)


def interpreter_results(script: Path, **env: str) -> dict:
    """Parent side: run ``script`` as the child, with TRITON_INTERPRET=1 and ``env``; case name -> result."""
    pytest.importorskip("triton", reason="triton is not installed: the Triton kernels cannot be interpreted")
    proc = subprocess.run([sys.executable, str(script)], env=dict(os.environ, TRITON_INTERPRET="1", **env),
                          capture_output=True, text=True, timeout=900, cwd=script.parent)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("CASE "):
            r = json.loads(line[5:])
            results[r["case"]] = r
    if not results:
        pytest.fail(f"interpreter child produced no results (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    results["_stderr"] = proc.stderr
    return results


def check(results: dict, case: str) -> None:
    r = results.get(case)
    assert r is not None, f"case {case} did not run:\n{results['_stderr'][-4000:]}"
    assert r["ok"], r.get("traceback")
