"""Kernel libraries shared by several backends.

``unifer.kernels.triton`` holds portable Triton kernels (used by GPU backends that ship Triton). Importing this
package never imports Triton; ``unifer.kernels.triton`` raises a clear ImportError only when its kernels are used
without Triton installed.
"""

from __future__ import annotations

import importlib.util


def triton_available() -> bool:
    """Whether the ``triton`` package can be imported (does not import it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a None or broken entry in sys.modules
        return False


__all__ = ["triton_available"]
