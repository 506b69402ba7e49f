"""Registers a test-only backend plugin without installing anything: a dist-info folder whose entry point
importlib.metadata finds once ``root`` is on sys.path."""

from __future__ import annotations

from pathlib import Path


def write_backend_dist(root: Path, dist: str, name: str, target: str) -> None:
    """``root/<dist>-0.1.dist-info`` declaring the ``unifer.backends`` entry point ``name = target``."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[unifer.backends]\n{name} = {target}\n")
