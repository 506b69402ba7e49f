"""Proof that the conformance suite catches real bugs: it fails every seeded defect and passes the clean wrapper.

The defective backends (tests/defective_backends) are registered through a real entry point, from a dist-info
folder put on sys.path, so the end-to-end level's engine finds them by name exactly as it finds a vendor's.
Levels ops, attention and sampling run in full; e2e runs its quick greedy case.
"""

from __future__ import annotations

import importlib
import sys
from collections import Counter

import pytest
from defective_backends.backends import DEFECTS
from plugin_dist import write_backend_dist
from unifer_conformance.report import exit_code
from unifer_conformance.suite import run_suite

KEYWORD = "not e2e or e2e/greedy/llama/float32"

# Which families of cases must catch each defect: a defect caught only by unrelated cases would mean the suite
# flags noise, not the bug. Family = the first two parts of a case id.
MUST_CATCH = {
    "softmax-scale": {"attention/mixed", "attention/decode", "attention/prefill", "attention/long_decode"},
    "rope-512": {"ops/rotary_embedding"},
    "kv-block-boundary": {"ops/write_kv", "attention/prefill"},
    "gqa-mapping": {"attention/mixed", "attention/decode"},
    "top-p-extra": {"sampling/mask", "sampling/chi_square"},
    "sliding-window": {"attention/sliding_window", "attention/window_soft_cap"},
}
MAY_CATCH = {  # families downstream of the defective op, which may also notice it
    "softmax-scale": {"attention/", "property/attention", "e2e/greedy"},
    "rope-512": {"ops/rotary_embedding", "ops/rotary_write_kv", "property/ops"},
    "kv-block-boundary": {"ops/write_kv", "ops/rotary_write_kv", "attention/", "property/attention", "e2e/greedy"},
    "gqa-mapping": {"attention/", "property/attention", "e2e/greedy"},
    "top-p-extra": {"sampling/mask", "sampling/chi_square"},
    "sliding-window": {"attention/sliding_window", "attention/window_soft_cap", "property/attention"},
}


@pytest.fixture(scope="module", autouse=True)
def defective_plugin(tmp_path_factory):
    root = tmp_path_factory.mktemp("defective-site")
    write_backend_dist(root, "unifer_defective_backends", "defective", "defective_backends.plugin")
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    yield
    sys.path.remove(str(root))
    importlib.invalidate_caches()


def _family(case_id: str) -> str:
    return "/".join(case_id.split("/")[:2])


def test_clean_wrapper_passes():
    report = run_suite("clean-cpu", keyword=KEYWORD)
    bad = [(c["id"], c["message"]) for c in report["cases"] if c["status"] in ("FAIL", "ERROR")]
    assert not bad, bad
    assert exit_code(report) == 0 and report["totals"]["PASS"] > 150


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_suite_fails_defective_backend(defect):
    report = run_suite(f"defect-{defect}", keyword=KEYWORD)
    caught = [c for c in report["cases"] if c["status"] in ("FAIL", "ERROR")]
    families = Counter(_family(c["id"]) for c in caught)
    print(f"\ndefect {defect!r} caught by {len(caught)} cases: "
          + ", ".join(f"{fam} x{n}" for fam, n in sorted(families.items())))
    for c in caught[:3]:
        print(f"  e.g. {c['status']} {c['id']}: {c['message'].splitlines()[0][:150]}")
    assert exit_code(report) == 1
    assert MUST_CATCH[defect] <= set(families), f"expected {MUST_CATCH[defect]} among {set(families)}"
    unrelated = {f for f in families if not any(f.startswith(p) for p in MAY_CATCH[defect])}
    assert not unrelated, f"cases unrelated to the {defect} defect failed: {unrelated}"
    # Sampling and ops must stay green for an attention defect (and so on): the report localises the bug.
    assert report["totals"]["PASS"] > 0
