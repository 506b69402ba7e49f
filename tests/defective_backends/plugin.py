"""Entry-point module (group ``unifer.backends``) for the defective test backends."""

from unifer.backends import hookimpl

from defective_backends.backends import make_backends


@hookimpl
def unifer_register_backends(registry) -> None:
    for backend in make_backends():
        registry.add(backend)
