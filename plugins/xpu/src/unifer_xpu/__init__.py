"""unifer's Intel GPU backend: PyTorch XPU devices, kernels from intel-extension-for-pytorch or portable Triton."""

from unifer_xpu.backend import XPUBackend

__all__ = ["XPUBackend"]
