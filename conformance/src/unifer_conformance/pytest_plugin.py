"""pytest plugin (entry point ``pytest11``): ``pytest --pyargs unifer_conformance --unifer-backend NAME``.

Loaded by every pytest run in an environment where the suite is installed, so it imports nothing heavy and does
nothing unless ``--unifer-backend`` is given. Works with ``-k CASE_ID`` and pytest-xdist: every worker collects the
same case list (ids and seeds depend only on the backend's Capabilities and ``--unifer-seed``), and each result
travels back to the controller in the test report's ``user_properties``, where ``--unifer-report`` is written.
"""

from __future__ import annotations

import json


def pytest_addoption(parser) -> None:
    group = parser.getgroup("unifer-conformance")
    group.addoption("--unifer-backend", help="run the conformance suite against this backend")
    group.addoption("--unifer-levels", default="ops,attention,sampling,e2e", help="comma-separated levels")
    group.addoption("--unifer-seed", type=int, default=0, help="suite seed")
    group.addoption("--unifer-perf", action="store_true", help="report attention times and rates")
    group.addoption("--unifer-report", metavar="FILE.json", help="write the JSON report (controller only)")
    group.addoption("--unifer-markdown", metavar="FILE.md", help="write the Markdown summary (controller only)")


def _config(pytest_config):
    from unifer_conformance.case import SuiteConfig

    return SuiteConfig(seed=pytest_config.getoption("unifer_seed"), perf=pytest_config.getoption("unifer_perf"))


def _backend(pytest_config):
    cached = getattr(pytest_config, "_unifer_backend", None)
    if cached is None:
        from unifer_conformance.suite import get_backend

        cached = get_backend(pytest_config.getoption("unifer_backend"))
        cached.init_device()
        pytest_config._unifer_backend = cached
    return cached


def pytest_generate_tests(metafunc) -> None:
    if "conformance_case" not in metafunc.fixturenames:
        return
    name = metafunc.config.getoption("unifer_backend")
    if not name:
        metafunc.parametrize("conformance_case", [None], ids=["no-backend"])
        return
    from unifer_conformance.suite import collect

    levels = tuple(x for x in metafunc.config.getoption("unifer_levels").split(",") if x)
    cases = collect(_backend(metafunc.config), levels, _config(metafunc.config))
    metafunc.parametrize("conformance_case", cases, ids=[c.id for c in cases])


def run_conformance_case(request, case) -> None:
    """The body of the one test function: run the case, attach its row, translate its status for pytest."""
    import pytest

    from unifer_conformance import report
    from unifer_conformance.suite import run_case

    if case is None:
        pytest.skip("no backend given: pass --unifer-backend NAME")
    config = request.config
    backend = _backend(config)
    result, seed, seconds = run_case(case, backend, _config(config))
    row = report.case_row(case, result, seed, seconds)
    request.node.user_properties.append(("unifer_conformance", json.dumps(row)))
    status = result.status.value
    if status == "NOT_APPLICABLE":
        pytest.skip(f"NOT_APPLICABLE: {result.message}")
    if status == "FAIL":
        pytest.fail(f"FAIL {case.id} (seed {seed}): {result.message}", pytrace=False)
    if status == "ERROR":
        raise RuntimeError(f"ERROR {case.id} (seed {seed}): {result.message}")



def pytest_runtest_logreport(report) -> None:
    # Runs on the controller for xdist workers' reports too; only the call phase (or a skip at setup) has the row.
    for key, value in getattr(report, "user_properties", []):
        if key == "unifer_conformance" and report.when == "call":
            _rows_sink.append(json.loads(value))


_rows_sink: list[dict] = []


def pytest_sessionfinish(session, exitstatus) -> None:
    config = session.config
    if not config.getoption("unifer_backend") or hasattr(config, "workerinput"):
        return  # nothing to write, or an xdist worker (the controller writes)
    path, md_path = config.getoption("unifer_report"), config.getoption("unifer_markdown")
    if not (path or md_path):
        return
    from unifer_conformance import report
    from unifer_conformance.suite import get_backend

    backend = get_backend(config.getoption("unifer_backend"))
    rows = sorted(_rows_sink, key=lambda r: r["id"])
    levels = tuple(x for x in config.getoption("unifer_levels").split(",") if x)
    result = report.build(backend, rows, config=_config(config), levels=levels,
                          keyword=config.getoption("keyword") or None, duration=sum(r["seconds"] for r in rows))
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    if md_path:
        with open(md_path, "w") as f:
            f.write(report.markdown(result))


def pytest_configure(config) -> None:
    # xdist workers on a CPU backend: each worker's torch would spin one thread per core, and N workers x N threads
    # on N cores run many times slower than one process. Give each worker its share of the cores.
    workerinput = getattr(config, "workerinput", None)
    if workerinput and config.getoption("unifer_backend"):
        import os

        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workerinput.get("workercount", 1))))
