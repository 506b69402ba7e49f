"""tests/tpu skip themselves where torch_xla (or JAX) is absent. In .venv-tpu nothing may be skipped:
scripts/ci_tpu.sh sets UNIFER_TPU_NO_SKIPS=1, which turns any skip into a failed run."""

from __future__ import annotations

import os

_skipped: list[str] = []


def _note(report) -> None:
    if report.skipped:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append(f"{report.nodeid}: {reason}")


def pytest_collectreport(report):
    _note(report)


def pytest_runtest_logreport(report):
    _note(report)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("UNIFER_TPU_NO_SKIPS") == "1" and _skipped:
        print("\nUNIFER_TPU_NO_SKIPS=1, but these were skipped:\n  " + "\n  ".join(_skipped))
        session.exitstatus = exitstatus or 1
