"""Plugin discovery through real entry points, selection rules, contract versions and op fallback."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from plugin_dist import write_backend_dist
from unifer.backends import API_VERSION, BackendSelectionError, Unsupported, discover, select_backend
from unifer.backends.registry import api_compatible
from unifer.ops import OP_NAMES, reference, resolve_ops

PLUGIN = '''
from unifer.backends import Availability, Backend, hookimpl


class {cls}(Backend):
    name = "{name}"
    device_type = "cpu"
    priority = {priority}
    api_version = "{api}"

    def probe(self):
        return Availability({ok}, "test backend")

    def native_ops(self):
        from unifer.ops import reference
        return {{"silu_and_mul": reference.silu_and_mul}}


@hookimpl
def unifer_register_backends(registry):
    {register}
'''


def install_plugin(root, dist: str, module: str, source: str) -> None:
    """A test-only distribution on sys.path: a module plus dist-info with a ``unifer.backends`` entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    write_backend_dist(root, dist, module, module)


def plugin_source(name, priority=5, ok=True, api=API_VERSION, register=None):
    cls = name.capitalize() + "Backend"
    return PLUGIN.format(cls=cls, name=name, priority=priority, ok=ok, api=api,
                         register=register or f"registry.add({cls}())")


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("UNIFER_BACKEND", raising=False)
    monkeypatch.delenv("UNIFER_PLUGINS", raising=False)
    yield tmp_path
    for module in ("acme_plugin", "broken_plugin"):  # each test writes its own version of these modules
        sys.modules.pop(module, None)


def test_cpu_backend_found_through_entry_point(plugin_dir):
    registry = discover()
    entry = registry.entry("cpu")
    assert entry.plugin == "cpu" and entry.availability.ok
    assert select_backend(registry=registry).name == "cpu"


def test_test_plugin_discovered_selectable_and_preferred_by_priority(plugin_dir):
    install_plugin(plugin_dir, "acme_backend", "acme_plugin", plugin_source("acme", priority=5))
    registry = discover()
    assert "acme" in registry.names()
    assert select_backend(registry=registry).name == "acme"  # priority 5 > cpu's 0
    assert select_backend("cpu", registry=registry).name == "cpu"
    ops = registry.entry("acme").backend.ops
    assert ops.source("silu_and_mul") == "native" and ops.source("rms_norm") == "fallback"
    assert ops.rms_norm is reference.rms_norm


def test_env_selection_and_plugin_restriction(plugin_dir, monkeypatch):
    install_plugin(plugin_dir, "acme_backend", "acme_plugin", plugin_source("acme", priority=5))
    monkeypatch.setenv("UNIFER_BACKEND", "cpu")
    assert select_backend().name == "cpu"
    monkeypatch.delenv("UNIFER_BACKEND")
    monkeypatch.setenv("UNIFER_PLUGINS", "cpu")
    assert discover().names() == ["cpu"]


@pytest.mark.parametrize("kind", ["import", "register", "probe", "contract"])
def test_broken_plugin_reported_and_skipped(plugin_dir, kind):
    if kind == "import":
        source = "raise ImportError('missing vendor runtime libacme.so')\n"
    elif kind == "register":
        source = plugin_source("acme", register="raise RuntimeError('driver exploded')")
    elif kind == "probe":
        source = plugin_source("acme").replace('return Availability(True, "test backend")',
                                               'raise OSError("device node busy")')
    else:
        source = plugin_source("acme", api="9.0")
    install_plugin(plugin_dir, "acme_backend", "acme_plugin", source)
    registry = discover()
    assert select_backend(registry=registry).name == "cpu"  # the core keeps working
    if kind == "probe":
        entry = registry.entry("acme")
        assert not entry.availability.ok and "device node busy" in entry.availability.reason
        with pytest.raises(BackendSelectionError, match="not available"):
            select_backend("acme", registry=registry)
    else:
        assert "acme" not in registry.names()
        failure = next(f for f in registry.failures if f.plugin == "acme_plugin")
        assert failure.stage == kind
        expected = {"import": "libacme", "register": "driver exploded", "contract": "9.0"}[kind]
        assert expected in failure.error


def test_equal_priority_is_an_error_naming_both(plugin_dir):
    install_plugin(plugin_dir, "acme_backend", "acme_plugin", plugin_source("acme", priority=0))
    with pytest.raises(BackendSelectionError, match=r"acme, cpu|cpu, acme"):
        select_backend(registry=discover())


def test_unknown_backend_names_the_known_ones(plugin_dir):
    with pytest.raises(BackendSelectionError, match="discovered backends: .*cpu"):
        select_backend("nonexistent", registry=discover())


def test_api_version_rules():
    assert api_compatible(API_VERSION)
    major, minor = (int(x) for x in API_VERSION.split("."))
    assert not api_compatible(f"{major + 1}.0")
    assert not api_compatible(f"{major}.{minor + 1}")
    assert not api_compatible("garbage")


def test_unclaimed_combination_raises_unsupported(plugin_dir):
    import torch

    cpu = select_backend("cpu", registry=discover())
    with pytest.raises(Unsupported, match="head size 7"):
        cpu.check_supported(dtype=torch.float32, head_size=7, block_size=16, gqa_ratio=1)


def test_cli_backends_json_lists_ops_and_failures(plugin_dir):
    install_plugin(plugin_dir, "broken_backend", "broken_plugin", "raise ImportError('no runtime')\n")
    env_path = str(plugin_dir)
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "from unifer.cli import main; sys.exit(main(['backends', '--json']))", env_path],
                          capture_output=True, text=True, check=True)
    data = json.loads(proc.stdout)
    cpu = next(b for b in data["backends"] if b["name"] == "cpu")
    assert cpu["available"] and set(cpu["ops"]) == set(OP_NAMES)
    assert cpu["ops"]["paged_attention"] == "native" and cpu["ops"]["rms_norm"] == "fallback"
    assert any(f["plugin"] == "broken_plugin" and "no runtime" in f["error"] for f in data["failed_plugins"])


def test_fused_op_falls_back_to_its_resolved_parts():
    """A backend with native rotary and KV-write kernels but no fused rotary_write_kv runs the fused op as its own
    two kernels (not the reference's), in order; a native fused op replaces them."""
    calls = []

    def rotary_embedding(positions, query, key, cos_sin_cache):
        calls.append("rotary")
        return reference.rotary_embedding(positions, query, key, cos_sin_cache)

    def write_kv(key, value, kv_cache, slot_mapping):
        calls.append(("write", key.clone()))
        reference.write_kv(key, value, kv_cache, slot_mapping)

    ops = resolve_ops({"rotary_embedding": rotary_embedding, "write_kv": write_kv})
    assert ops.source("rotary_write_kv") == "composite" and ops.source("rms_norm") == "fallback"
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, h, 8, generator=g) for h in (4, 2, 2))
    cos_sin, positions, slots = torch.randn(16, 8, generator=g), torch.tensor([0, 5, 9]), torch.tensor([1, -1, 6])
    cache, want_cache = torch.zeros(2, 2, 4, 2, 8), torch.zeros(2, 2, 4, 2, 8)
    got = ops.rotary_write_kv(positions, q, k, v, cos_sin, cache, slots)
    want = reference.rotary_write_kv(positions, q, k, v, cos_sin, want_cache, slots)
    assert calls[0] == "rotary" and calls[1][0] == "write"
    assert torch.equal(calls[1][1], reference.rotary_embedding(positions, q, k, cos_sin)[1])  # the rotated key
    assert torch.equal(got, want) and torch.equal(cache, want_cache)
    fused = resolve_ops({"rotary_write_kv": reference.rotary_write_kv})
    assert fused.rotary_write_kv is reference.rotary_write_kv and fused.source("rotary_write_kv") == "native"
