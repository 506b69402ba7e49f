"""Entry point module (group ``unifer.backends``): registers the CUDA backend. Cheap: touches no device."""

from unifer.backends import hookimpl

from unifer_cuda.backend import CUDABackend


@hookimpl
def unifer_register_backends(registry) -> None:
    registry.add(CUDABackend())
