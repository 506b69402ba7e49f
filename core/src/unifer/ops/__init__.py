"""Kernels: the reference implementations (ops.reference) and the per-backend ops table (ops.table)."""

from unifer.ops.table import OP_NAMES, Ops, resolve_ops

__all__ = ["OP_NAMES", "Ops", "resolve_ops"]
