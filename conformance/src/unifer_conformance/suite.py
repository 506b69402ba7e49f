"""Collects the cases for one backend and runs them into a report. The CLI and the pytest plugin both use this."""

from __future__ import annotations

import time
import traceback

from unifer_conformance.case import Case, Result, Status, SuiteConfig

LEVELS = ("ops", "attention", "sampling", "e2e")


def get_backend(name: str, registry=None):
    """The named backend through the normal discovery (entry points), refusing an unavailable one."""
    from unifer.backends import select_backend

    return select_backend(name, registry=registry)


def collect(backend, levels=LEVELS, config: SuiteConfig | None = None) -> list[Case]:
    """Every case of the chosen levels, in a stable order (pytest-xdist workers must collect identical lists).
    Claims (capabilities checked both ways) belong to the attention level: they describe its grid."""
    from unifer_conformance import grid, level_attention, level_e2e, level_ops, level_sampling, properties

    config = config or SuiteConfig()
    unknown = set(levels) - set(LEVELS)
    if unknown:
        raise ValueError(f"unknown level(s) {sorted(unknown)}; the levels are {', '.join(LEVELS)}")
    cases: list[Case] = []
    if "ops" in levels:
        cases += level_ops.cases(backend) + properties.ops_cases(backend)
    if "attention" in levels:
        cases += grid.claim_cases(backend) + level_attention.cases(backend) + properties.attention_cases(backend)
    if "sampling" in levels:
        cases += level_sampling.cases(backend)
    if "e2e" in levels:
        cases += level_e2e.cases(backend)
    ids = [c.id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise RuntimeError(f"duplicate case ids: {sorted(dup)[:5]}")
    return cases


def select(cases: list[Case], keyword: str | None) -> list[Case]:
    """pytest's -k semantics: each word of the expression matches as a case-insensitive substring of the id."""
    if not keyword:
        return cases
    from _pytest.mark.expression import Expression

    expr = Expression.compile(keyword)
    return [c for c in cases if expr.evaluate(_matcher(c.id))]


def _matcher(case_id: str):
    low = case_id.lower()

    def match(name: str, **_kwargs) -> bool:
        return name.lower() in low

    return match


def run_case(case: Case, backend, config: SuiteConfig) -> tuple[Result, int, float]:
    seed = case.seed(config.seed)
    if case.run is None:
        return Result(Status.NOT_APPLICABLE, case.not_applicable), seed, 0.0
    t0 = time.perf_counter()
    try:
        result = case.run(backend, config, seed)
    except Exception as exc:  # a crash is ERROR, apart from a wrong answer (FAIL)
        from unifer.backends import Unsupported

        tb = traceback.format_exc(limit=-3)
        if isinstance(exc, Unsupported):  # a declared combination refused at run time: the claim was false
            result = Result(Status.FAIL, f"declared in Capabilities but raised Unsupported: {exc}")
        else:
            result = Result(Status.ERROR, f"{type(exc).__name__}: {exc}\n{tb}")
    return result, seed, time.perf_counter() - t0


def run_suite(backend_name: str, *, levels=LEVELS, keyword: str | None = None, config: SuiteConfig | None = None,
              registry=None, progress=None) -> dict:
    """Run the suite against one backend; returns the report (a dict in the documented JSON schema)."""
    from unifer_conformance import report

    config = config or SuiteConfig()
    backend = get_backend(backend_name, registry)
    backend.init_device()
    cases = select(collect(backend, levels, config), keyword)
    started = time.time()
    rows = []
    for case in cases:
        result, seed, seconds = run_case(case, backend, config)
        rows.append(report.case_row(case, result, seed, seconds))
        if progress:
            progress(rows[-1])
    return report.build(backend, rows, config=config, levels=levels, keyword=keyword,
                        duration=time.time() - started)
