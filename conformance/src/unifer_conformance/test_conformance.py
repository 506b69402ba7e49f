"""The suite as pytest tests, one per case (collected by ``pytest --pyargs unifer_conformance``)."""

from unifer_conformance.pytest_plugin import run_conformance_case


def test_case(request, conformance_case):
    run_conformance_case(request, conformance_case)
