"""The TPU backend's probe: it never imports torch_xla (absent, or present), and claims exactly what PJRT_DEVICE
names. Each check runs in a fresh interpreter so that sys.modules shows what the probe imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

# A stand-in torch_xla / libtpu whose import fails loudly: a probe that imports them would report the failure.
POISON = "raise ImportError('{name} was imported by the TPU probe')\n"

PROBE = """
import json, sys
import unifer_tpu.backend as tb
nodes = {nodes!r}
if nodes is not None:
    tb.glob.glob = lambda pattern: [n for n in nodes if n.startswith(pattern.split("*")[0].split("[")[0])]
from unifer.backends import discover, select_backend
registry = discover()
entry = registry.entry("tpu")
b = entry.backend
result = dict(ok=entry.availability.ok, reason=entry.availability.reason, priority=b.priority,
              auto=select_backend(registry=registry).name, compilations=b.capabilities.extra["compilations"],
              dtypes=list(b.capabilities.dtypes), imported=sorted(m for m in sys.modules if m.split(".")[0] in
                                                                   ("torch_xla", "libtpu", "jax")))
print(json.dumps(result))
"""


def _probe(tmp_path, pjrt: str | None, fake: tuple[str, ...] = (), nodes: list[str] | None = None) -> dict:
    site = tmp_path / "site"
    for name in fake:
        (site / name).mkdir(parents=True, exist_ok=True)
        (site / name / "__init__.py").write_text(POISON.format(name=name))
    env = {k: v for k, v in os.environ.items() if k not in ("PJRT_DEVICE", "UNIFER_BACKEND", "UNIFER_PLUGINS")}
    if pjrt is not None:
        env["PJRT_DEVICE"] = pjrt
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in sys.path if p])
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(PROBE.format(nodes=nodes))], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def _no_real_torch_xla():
    import importlib.util

    if importlib.util.find_spec("torch_xla") is not None:
        pytest.skip("torch_xla is installed here; these tests need an environment without it")


@pytest.mark.parametrize("pjrt", ["TPU", "CPU", None, "CUDA"])
def test_absent_torch_xla_is_reported_never_imported(tmp_path, pjrt):
    r = _probe(tmp_path, pjrt)
    assert not r["ok"] and "torch_xla is not installed" in r["reason"]
    assert r["imported"] == [] and r["auto"] == "cpu" and r["compilations"] == 0


def test_cpu_client_is_claimed_for_verification_only(tmp_path):
    r = _probe(tmp_path, "CPU", fake=("torch_xla",))
    assert r["ok"], r["reason"]
    assert "CPU client" in r["reason"] and "verif" in r["reason"]
    assert r["priority"] < 0 and r["auto"] == "cpu"  # never chosen over the cpu backend automatically
    assert "float16" in r["dtypes"] and r["imported"] == []


def test_tpu_needs_libtpu_and_a_device_node(tmp_path):
    r = _probe(tmp_path, "TPU", fake=("torch_xla",))
    assert not r["ok"] and "libtpu" in r["reason"] and r["imported"] == []
    r = _probe(tmp_path, "TPU", fake=("torch_xla", "libtpu"), nodes=[])
    assert not r["ok"] and "device node" in r["reason"] and r["imported"] == []
    r = _probe(tmp_path, "tpu", fake=("torch_xla", "libtpu"), nodes=["/dev/accel0", "/dev/accel1"])
    assert r["ok"] and "TPU" in r["reason"] and "2 device nodes" in r["reason"], r["reason"]
    assert r["priority"] > 0 and r["auto"] == "tpu" and r["dtypes"] == ["bfloat16", "float32"]
    assert r["imported"] == []


@pytest.mark.parametrize("pjrt, why", [(None, "PJRT_DEVICE is not set"), ("CUDA", "PJRT_DEVICE=CUDA is not")])
def test_other_pjrt_devices_are_refused(tmp_path, pjrt, why):
    r = _probe(tmp_path, pjrt, fake=("torch_xla", "libtpu"), nodes=["/dev/accel0"])
    assert not r["ok"] and why in r["reason"] and r["imported"] == []


def test_unifer_backends_lists_it_without_importing_torch_xla(tmp_path):
    site = tmp_path / "site"
    (site / "torch_xla").mkdir(parents=True)
    (site / "torch_xla" / "__init__.py").write_text(POISON.format(name="torch_xla"))
    env = dict(os.environ, PJRT_DEVICE="CPU", PYTHONPATH=os.pathsep.join([str(site)] + [p for p in sys.path if p]))
    cli = [sys.executable, "-c", "import sys; from unifer.cli import main; sys.exit(main())", "backends", "--json"]
    out = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    tpu = next(b for b in json.loads(out.stdout)["backends"] if b["name"] == "tpu")
    assert tpu["available"] and "error" not in tpu["ops"], tpu
    assert {k for k, v in tpu["ops"].items() if v == "native"} == {"write_kv", "paged_attention", "random_sample"}
    extra = tpu["capabilities"]["extra"]
    assert extra["compilations"] == 0 and extra["token_buckets"][0] == 16 and extra["pjrt_device"] == "CPU"
