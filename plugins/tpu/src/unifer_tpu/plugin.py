"""Entry point module (group ``unifer.backends``): registers the TPU backend. Cheap: imports no torch_xla."""

from unifer.backends import hookimpl

from unifer_tpu.backend import TPUBackend


@hookimpl
def unifer_register_backends(registry) -> None:
    registry.add(TPUBackend())
