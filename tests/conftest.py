from __future__ import annotations

import pytest
from checkpoints import ARCHS, make_checkpoint


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """Build each (architecture, options) checkpoint once per session."""
    cache = {}

    def get(architecture: str = "LlamaForCausalLM", **options):
        key = (architecture, tuple(sorted(options.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(architecture.lower())
            cache[key] = make_checkpoint(folder, architecture, **options)
        return cache[key]

    return get


@pytest.fixture(scope="session", params=sorted(ARCHS))
def any_checkpoint(request, checkpoint_factory):
    return request.param, checkpoint_factory(request.param)
