"""Entry point module (group ``unifer.backends``): registers the ROCm backend. Cheap: touches no device."""

from unifer.backends import hookimpl

from unifer_rocm.backend import ROCmBackend


@hookimpl
def unifer_register_backends(registry) -> None:
    registry.add(ROCmBackend())
