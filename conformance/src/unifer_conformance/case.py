"""What a case is, what it returns, and the error metrics every numeric comparison uses."""

from __future__ import annotations

import enum
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from unifer_conformance.tolerances import NSE_MIN_ELEMENTS, Tolerance


class Status(str, enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    NOT_APPLICABLE = "NOT_APPLICABLE"  # outside the backend's declared Capabilities: listed, never run
    ERROR = "ERROR"  # the case raised: the backend crashed (or the claim machinery did)


@dataclass
class Result:
    status: Status
    message: str = ""
    max_abs_err: float | None = None
    tol_abs: float | None = None
    nse: float | None = None  # normalised squared error: sum((x - ref)^2) / sum(ref^2)
    tol_nse: float | None = None
    perf: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SuiteConfig:
    seed: int = 0
    perf: bool = False
    # How many random shapes each property case draws (hypothesis examples).
    property_examples: int = 50


# A case id is a path of [A-Za-z0-9_.+-] words joined by "/": every character is legal in a pytest -k expression,
# so the id printed in a report can be pasted into `-k` as it is.
_ID_OK = re.compile(r"^[A-Za-z0-9_.+\-/]+$")


@dataclass
class Case:
    id: str
    level: str  # "ops", "attention", "sampling", "e2e"
    run: Callable[[Any, SuiteConfig, int], Result] | None  # (backend, config, seed) -> Result; None: not applicable
    params: dict[str, Any] = field(default_factory=dict)
    not_applicable: str = ""  # why, when run is None

    def __post_init__(self) -> None:
        if not _ID_OK.match(self.id):
            raise ValueError(f"case id {self.id!r} has characters pytest -k cannot take")

    def seed(self, suite_seed: int) -> int:
        """Each case draws fresh inputs from its own seed, derived from the suite seed and the id, so one case
        reruns alone (``-k ID --seed N``) with exactly the inputs it had in the full run."""
        return zlib.crc32(f"{suite_seed}:{self.id}".encode()) & 0x7FFFFFFF


def errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max abs error, normalised squared error) of ``actual`` against the float64 ``expected``.
    Non-finite values where the reference is finite count as infinite error."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if a.shape != e.shape:
        return float("inf"), float("inf")
    if not torch.isfinite(a).all():
        return float("inf"), float("inf")
    diff = a - e
    max_abs = diff.abs().max().item() if diff.numel() else 0.0
    denom = e.pow(2).sum().item()
    nse = diff.pow(2).sum().item() / denom if denom > 0 else (0.0 if max_abs == 0 else float("inf"))
    return max_abs, nse


def judge(actual: torch.Tensor, expected: torch.Tensor, tol: Tolerance, what: str = "output") -> Result:
    """PASS when both the max abs error and the normalised squared error are within the dtype's tolerance."""
    if tuple(actual.shape) != tuple(expected.shape):
        return Result(Status.FAIL, f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    max_abs, nse = errors(actual, expected)
    ok = max_abs <= tol.max_abs and (nse <= tol.nse or expected.numel() < NSE_MIN_ELEMENTS)
    msg = "" if ok else (f"{what}: max abs error {max_abs:.3g} (tolerance {tol.max_abs:.3g}), "
                         f"normalised squared error {nse:.3g} (tolerance {tol.nse:.3g})")
    if max_abs == float("inf"):
        bad = (~torch.isfinite(actual.detach().cpu())).sum().item()
        msg = f"{what}: {bad} non-finite elements (an unwritten output or a read of a NaN-poisoned slot)"
    return Result(Status.PASS if ok else Status.FAIL, msg, max_abs, tol.max_abs, nse, tol.nse)


def worst(results: list[Result]) -> Result:
    """Combine the sub-checks of one case: the first failure wins, else the largest error is reported."""
    for r in results:
        if r.status is not Status.PASS:
            return r
    best = max(results, key=lambda r: (r.max_abs_err or 0.0) / (r.tol_abs or 1.0))
    return best
