"""unifer's NVIDIA CUDA backend: core's portable Triton kernels, torch for matrix products."""

from unifer_cuda.backend import CUDABackend

__all__ = ["CUDABackend"]
