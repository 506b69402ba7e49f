"""Architectures by the name found in config.json; plugins add theirs through ``unifer_register_models``."""

from __future__ import annotations

from importlib.metadata import entry_points

import pluggy

from unifer.backends import hookspecs
from unifer.model.errors import CheckpointError
from unifer.model.llama import LlamaForCausalLM

ENTRY_POINT_GROUP = "unifer.models"
_BUILTIN = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


class ModelRegistry:
    def __init__(self) -> None:
        self._models: dict[str, type] = {name: LlamaForCausalLM for name in _BUILTIN}
        self.failures: list[str] = []

    def add(self, architecture: str, model_class: type) -> None:
        self._models[architecture] = model_class

    def resolve(self, hf_config: dict) -> tuple[str, type]:
        names = hf_config.get("architectures") or []
        for name in names:
            if name in self._models:
                return name, self._models[name]
        raise CheckpointError(
            f"unsupported architecture {', '.join(names) or '(config.json names none)'}; "
            f"supported: {', '.join(sorted(self._models))}")

    @classmethod
    def discover(cls) -> ModelRegistry:
        """Built-ins plus every ``unifer.models`` entry point; a failing plugin is recorded and skipped."""
        registry = cls()
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:
                registry.failures.append(f"{ep.name}: {type(exc).__name__}: {exc}")
        for impl in pm.hook.unifer_register_models.get_hookimpls():
            try:
                impl.function(registry=registry)
            except Exception as exc:
                registry.failures.append(f"{impl.plugin_name}: {type(exc).__name__}: {exc}")
        return registry
