"""Entry point module (group ``unifer.backends``): registers the XPU backend. Cheap: touches no device."""

from unifer.backends import hookimpl

from unifer_xpu.backend import XPUBackend


@hookimpl
def unifer_register_backends(registry) -> None:
    registry.add(XPUBackend())
