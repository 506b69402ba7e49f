"""unifer's AMD ROCm backend: core's portable Triton kernels with CDNA launch configurations, torch for matmuls."""

from unifer_rocm.archs import ARCHS, CDNAArch
from unifer_rocm.backend import ROCmBackend

__all__ = ["ARCHS", "CDNAArch", "ROCmBackend"]
