"""The backend contract: what an accelerator plugin implements (see DESIGN.md, "The backend contract")."""

from unifer.backends.backend import (
    API_VERSION,
    AttentionMetadata,
    Availability,
    Backend,
    Capabilities,
    Unsupported,
)
from unifer.backends.comm import Communicator
from unifer.backends.hookspecs import hookimpl, hookspec
from unifer.backends.registry import BackendRegistry, BackendSelectionError, discover, select_backend

__all__ = [
    "API_VERSION",
    "AttentionMetadata",
    "Availability",
    "Backend",
    "BackendRegistry",
    "BackendSelectionError",
    "Capabilities",
    "Communicator",
    "Unsupported",
    "discover",
    "hookimpl",
    "hookspec",
    "select_backend",
]
