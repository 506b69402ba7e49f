"""unifer: a universal LLM inference engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from unifer.engine.llm import LLM
    from unifer.sample.params import SamplingParams

__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import unifer` (done by every plugin) stays cheap and free of cycles.
    if name == "LLM":
        from unifer.engine.llm import LLM

        return LLM
    if name == "SamplingParams":
        from unifer.sample.params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'unifer' has no attribute {name!r}")
