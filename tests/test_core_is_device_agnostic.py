"""Core never names a device (DESIGN.md, pain 4): device services come from the backend."""

from __future__ import annotations

import re
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core" / "src" / "unifer"
ALLOWED = CORE / "kernels" / "triton"
FORBIDDEN = re.compile(r"torch\.(cuda|xpu|mps)\b|[\"'](cuda|xpu|hip|mps|xla)(:\d+)?[\"']|torch_xla")


def test_core_names_no_device():
    offenders = []
    for path in CORE.rglob("*.py"):
        if ALLOWED in path.parents:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if FORBIDDEN.search(line):
                offenders.append(f"{path.relative_to(CORE)}:{number}: {line.strip()}")
    assert not offenders, "core names a device:\n" + "\n".join(offenders)


def test_pattern_catches_device_names():
    for line in ('x.to("cuda")', "torch.cuda.synchronize()", "device='xpu:0'", "import torch_xla"):
        assert FORBIDDEN.search(line), line
