"""The hooks a unifer plugin implements.

A plugin is a module named by an entry point in the group ``unifer.backends``. Core loads each such module,
registers it with pluggy and calls the hooks below. Every hook takes keyword arguments only (pluggy's rule), so
a hook can gain arguments in a later contract version without breaking plugins written against an earlier one.
"""

from __future__ import annotations

import pluggy

PROJECT = "unifer"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def unifer_register_backends(registry) -> None:
    """Add this plugin's backends to ``registry`` with ``registry.add(backend)``.

    ``backend`` is an instance of a :class:`unifer.backends.Backend` subclass. This hook must be cheap: it must
    not initialise a device. Whether the hardware is present is asked later through ``Backend.probe()``.
    An exception raised here is caught, reported by ``unifer backends`` and the plugin is skipped.
    """


@hookspec
def unifer_register_models(registry) -> None:
    """Add model architectures with ``registry.add(architecture_name, model_class)``.

    ``architecture_name`` is the string found in a checkpoint's ``config.json`` ``architectures`` list
    (e.g. ``"LlamaForCausalLM"``). ``model_class`` follows :class:`unifer.model.llama.LlamaForCausalLM`:
    constructed from ``(hf_config: dict, ops: Ops, dtype, device, architecture=name)`` and exposing ``spec``,
    ``forward``, ``compute_logits`` and ``load_weights``. A ``compute_logits`` that takes ``out`` lets every
    decode graph write its logits into one shared buffer. Lets a model provider ship an architecture as a
    package, with no change to core.
    """
