"""Entry point module (group ``unifer.backends``): registers the CPU backend."""

from unifer.backends import hookimpl

from unifer_cpu.backend import CPUBackend


@hookimpl
def unifer_register_backends(registry) -> None:
    registry.add(CPUBackend())
