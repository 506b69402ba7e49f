"""Test-only backends: the CPU backend with one seeded defect each, to prove the conformance suite catches bugs.

Registered without installing anything: tests write a dist-info folder with a ``unifer.backends`` entry point
naming :mod:`defective_backends.plugin` onto sys.path (see tests/test_conformance_defects.py).
"""
