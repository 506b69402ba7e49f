"""The conformance suite's own machinery: claims checked both ways, guards, report schema, CLI, pytest plugin."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from unifer.backends import BackendRegistry, Capabilities, Unsupported
from unifer.ops import reference
from unifer_conformance import REPORT_SCHEMA_VERSION, cli
from unifer_conformance.report import markdown
from unifer_conformance.suite import run_suite
from unifer_cpu import CPUBackend


def _registry(*backends) -> BackendRegistry:
    registry = BackendRegistry()
    for b in backends:
        registry.add(b)
    registry.probe_all()
    return registry


def _statuses(report) -> dict[str, str]:
    return {c["id"]: c["status"] for c in report["cases"]}


class AcceptsEverything(CPUBackend):
    """Declares no float16 and no soft-cap, yet its check_supported never refuses: a false claim."""

    name = "accepts-everything"
    capabilities = Capabilities(dtypes=("float32", "bfloat16"), head_sizes=(64, 128), block_sizes=(16,),
                                max_gqa_ratio=4, logit_soft_cap=False)

    def check_supported(self, **kwargs) -> None:
        return None


class RefusesDeclared(CPUBackend):
    """Declares head size 96 but refuses it: the other direction of a false claim."""

    name = "refuses-declared"

    def check_supported(self, *, head_size, **kwargs) -> None:
        if head_size == 96:
            raise Unsupported("head size 96 is not built")
        super().check_supported(head_size=head_size, **kwargs)


def test_claims_are_checked_both_ways():
    report = run_suite("accepts-everything", levels=("attention",), keyword="claims",
                       registry=_registry(AcceptsEverything()))
    s = _statuses(report)
    assert s["claims/dtype/float16"] == "FAIL" and s["claims/soft_cap"] == "FAIL"
    assert s["claims/gqa/g8"] == "FAIL" and s["claims/head_size/h80"] == "FAIL"
    assert s["claims/dtype/float32"] == "PASS" and s["claims/gqa/g4"] == "PASS"
    report = run_suite("refuses-declared", levels=("attention",), keyword="claims",
                       registry=_registry(RefusesDeclared()))
    s = _statuses(report)
    assert s["claims/head_size/h96"] == "FAIL" and s["claims/head_size/h128"] == "PASS"
    assert s["claims/block_size/b64"] == "PASS"  # undeclared by the CPU backend and refused with Unsupported


def test_undeclared_combinations_are_listed_not_run():
    report = run_suite("accepts-everything", levels=("ops", "attention"), keyword="not property",
                       registry=_registry(AcceptsEverything()))
    s = _statuses(report)
    assert s["attention/mixed/float16/h128/b16/g2"] == "NOT_APPLICABLE"
    assert s["attention/soft_cap/float32/h128/b16/g2/cap8"] == "NOT_APPLICABLE"
    assert s["attention/mixed/float32/h80/b16/g2"] == "NOT_APPLICABLE"
    assert s["attention/mixed/float32/h128/b16/g2"] == "PASS"
    assert s["ops/rms_norm/float16/t7/d1000"] == "NOT_APPLICABLE"


class WritesItsInput(CPUBackend):
    """rms_norm that normalises in place (clobbers x) and leaves its last output column unwritten."""

    name = "writes-its-input"

    def native_ops(self):
        def rms_norm(x, weight, eps, residual=None):
            out = reference.rms_norm(x, weight, eps, residual=residual)
            x.mul_(1.0)
            x[..., 0] = 7.0  # an in-place write into the input
            return out

        def silu_and_mul(x):
            out = reference.silu_and_mul(x)
            out[..., -1] = float("nan")  # an element never written by a kernel is NaN from the poisoned buffer
            return out

        return {**super().native_ops(), "rms_norm": rms_norm, "silu_and_mul": silu_and_mul}


def test_in_place_writes_and_unwritten_outputs_fail():
    report = run_suite("writes-its-input", levels=("ops",), keyword="rms_norm or silu",
                       registry=_registry(WritesItsInput()))
    rows = {c["id"]: c for c in report["cases"]}
    rms = rows["ops/rms_norm/float32/t7/d1000"]
    assert rms["status"] == "FAIL" and "modified in place" in rms["message"]
    silu = rows["ops/silu_and_mul/float32/t7/d1000"]
    assert silu["status"] == "FAIL" and "non-finite" in silu["message"]


class BrokenRotaryWriteKV(CPUBackend):
    """A fused rotary_write_kv with one defect chosen by ``defect``."""

    name = "broken-rotary-write-kv"

    def __init__(self, defect: str) -> None:
        self.defect = defect

    def native_ops(self):
        def rotary_write_kv(positions, query, key, value, cos_sin_cache, kv_cache, slot_mapping):
            q_rot, k_rot = reference.rotary_embedding(positions, query, key, cos_sin_cache)
            if self.defect == "unrotated key":
                k_rot = key
            if self.defect == "padding written":  # slot -1 taken as the cache's last slot
                slot_mapping = torch.where(slot_mapping < 0, kv_cache.shape[1] * kv_cache.shape[2] - 1, slot_mapping)
            reference.write_kv(k_rot, value, kv_cache, slot_mapping)
            return q_rot if self.defect != "unrotated query" else query.clone()

        return {**super().native_ops(), "rotary_write_kv": rotary_write_kv}


def test_rotary_write_kv_defects_fail_and_the_composite_passes():
    for defect, needle in (("unrotated key", "key in the cache"), ("unrotated query", "query"),
                           ("padding written", "changed")):
        report = run_suite("broken-rotary-write-kv", levels=("ops",), keyword="rotary_write_kv and float32",
                           registry=_registry(BrokenRotaryWriteKV(defect)))
        rows = [c for c in report["cases"] if c["status"] != "NOT_APPLICABLE"]
        assert rows and all(c["status"] == "FAIL" and needle in c["message"] for c in rows), (defect, rows)
    report = run_suite("cpu", levels=("ops",), keyword="rotary_write_kv", registry=_registry(CPUBackend()))
    assert report["coverage"]["rotary_write_kv"] == "composite"
    assert {c["status"] for c in report["cases"]} == {"PASS", "NOT_APPLICABLE"}


class BiasedSampler(CPUBackend):
    """Draws from p^1.15 instead of p: a subtle bias only a distribution test sees."""

    name = "biased-sampler"

    def native_ops(self):
        def random_sample(probs, generators):
            sharper = probs.pow(1.15)
            return reference.random_sample(sharper / sharper.sum(-1, keepdim=True), generators)

        return {**super().native_ops(), "random_sample": random_sample}


def test_chi_square_catches_a_biased_sampler():
    report = run_suite("biased-sampler", levels=("sampling",), keyword="chi_square/plain",
                       registry=_registry(BiasedSampler()))
    (row,) = report["cases"]
    assert row["status"] == "FAIL" and row["extra"]["p_value"] < 1e-4


def test_cases_rerun_with_the_same_inputs_and_seed_changes_them():
    a = run_suite("cpu", levels=("attention",), keyword="attention/chunk/float32")
    b = run_suite("cpu", levels=("attention",), keyword="attention/chunk/float32")
    assert [c["max_abs_err"] for c in a["cases"]] == [c["max_abs_err"] for c in b["cases"]]
    from unifer_conformance.case import SuiteConfig

    c = run_suite("cpu", levels=("attention",), keyword="attention/chunk/float32", config=SuiteConfig(seed=1))
    assert [r["seed"] for r in c["cases"]] != [r["seed"] for r in a["cases"]]


def test_cli_writes_versioned_report_and_exit_code(tmp_path, capsys):
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    rc = cli.main(["--backend", "cpu", "--levels", "ops,attention", "-k", "write_kv or long_decode/float32",
                   "--perf", "--report", str(out), "--markdown", str(md), "-q"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["schema"] == "unifer-conformance-report" and report["schema_version"] == REPORT_SCHEMA_VERSION
    assert report["backend"]["name"] == "cpu" and report["coverage"]["paged_attention"] == "native"
    assert {"python", "torch", "suite", "unifer"} <= set(report["environment"])
    totals = report["totals"]
    assert totals["total"] == len(report["cases"]) == sum(totals[s] for s in ("PASS", "FAIL", "ERROR",
                                                                              "NOT_APPLICABLE"))
    perf = next(c["perf"] for c in report["cases"] if c["id"].startswith("attention/long_decode"))
    assert perf["GB_per_s"] > 0 and perf["GFLOP_per_s"] > 0
    assert "PASSED" in md.read_text() and "Attention performance" in md.read_text()
    assert cli.main(["--backend", "no-such-backend"]) == 2


def test_markdown_lists_failures():
    report = run_suite("biased-sampler", levels=("sampling",), keyword="chi_square/plain",
                       registry=_registry(BiasedSampler()))
    text = markdown(report)
    assert "FAILED" in text and "`sampling/chi_square/plain`" in text


def test_pytest_plugin_runs_one_case_by_id_with_xdist(tmp_path):
    case_id = "attention/prefix_hit/float32/h128/b16/g2"
    report = tmp_path / "p.json"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", "unifer_conformance",
           "--unifer-backend", "cpu", "-k", case_id, "-n", "2", "--unifer-report", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    rows = json.loads(report.read_text())["cases"]
    assert [r["id"] for r in rows] == [case_id] and rows[0]["status"] == "PASS"


def test_float64_oracle_is_not_the_tested_output():
    """Guard against a vacuous suite: the attention oracle differs from a float32 run by rounding, not zero."""
    report = run_suite("cpu", levels=("attention",), keyword="attention/mixed/float32/h128/b16/g2")
    (row,) = report["cases"]
    assert row["status"] == "PASS" and 0 < row["max_abs_err"] <= row["tol_abs"]
    assert torch.get_default_dtype() == torch.float32
