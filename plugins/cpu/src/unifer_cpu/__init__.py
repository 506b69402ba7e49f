"""unifer's CPU backend (PyTorch)."""

from unifer_cpu.backend import CPUBackend

__all__ = ["CPUBackend"]
