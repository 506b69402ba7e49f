"""Prints the errors that correct implementations show against float64 on the suite's own inputs: the evidence
behind tolerances.py. Run: ``python -m unifer_conformance.calibrate [--seeds 5]``.

The correct implementations are the reference ops run in each dtype (a backend with no native op) and the CPU
backend (torch SDPA attention), over the ops and attention levels with several suite seeds. A bound in
tolerances.py should be about 1.5x the largest value printed here for its row.
"""

from __future__ import annotations

import argparse
from collections import defaultdict


def _family(case_id: str) -> str:
    parts = case_id.split("/")
    if parts[0] == "attention" or parts[:2] == ["property", "attention"]:
        return "paged_attention"
    return parts[1] if parts[0] == "ops" else parts[2]


def reference_backend():
    """A backend with no native op: every kernel is unifer.ops.reference."""
    from unifer.backends import Availability, Backend, Capabilities

    class ReferenceOnly(Backend):
        name = "reference-only"
        device_type = "cpu"
        capabilities = Capabilities(head_sizes=(32, 64, 80, 96, 128, 256), block_sizes=(8, 16, 32, 64),
                                    max_gqa_ratio=16)

        def probe(self):
            return Availability(True, "calibration")

    return ReferenceOnly()


def observed(backends, seeds: int) -> dict:
    from unifer_conformance.case import SuiteConfig
    from unifer_conformance.suite import collect, run_case

    worst: dict = defaultdict(lambda: [0.0, 0.0])
    for backend in backends:
        for seed in range(seeds):
            config = SuiteConfig(seed=seed)
            for case in collect(backend, ("ops", "attention"), config):
                if case.level == "claims" or case.run is None:
                    continue
                result, _, _ = run_case(case, backend, config)
                if result.max_abs_err is None or result.max_abs_err == float("inf"):
                    continue
                key = (_family(case.id), case.params.get("dtype"))
                worst[key][0] = max(worst[key][0], result.max_abs_err)
                worst[key][1] = max(worst[key][1], result.nse)
    return dict(worst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    from unifer.backends import select_backend

    from unifer_conformance.tolerances import TOLERANCES

    rows = observed([reference_backend(), select_backend("cpu")], args.seeds)
    print(f"{'op':20} {'dtype':9} {'observed max abs':>17} {'bound':>9} {'observed nse':>13} {'bound':>9}")
    for (op, dtype), (mx, nse) in sorted(rows.items()):
        tol = TOLERANCES.get((op, dtype))
        print(f"{op:20} {dtype:9} {mx:17.2e} {tol.max_abs if tol else float('nan'):9.1e} {nse:13.2e} "
              f"{tol.nse if tol else float('nan'):9.1e}")


if __name__ == "__main__":
    main()
