"""Reading a local Hugging Face checkpoint folder: config.json and safetensors shards. Pickle is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from unifer.model.errors import CheckpointError

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def checkpoint_dir(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"model folder {str(folder)!r} does not exist (only local checkpoints are loaded)")
    return folder


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: a Hugging Face checkpoint folder needs config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None


def resolve_dtype(requested: str, hf_config: dict) -> torch.dtype:
    """``auto`` takes the checkpoint's dtype (``dtype`` or ``torch_dtype`` in config.json), float32 if unstated."""
    if requested != "auto":
        return _DTYPES[requested]
    name = hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32"
    if name not in _DTYPES:
        raise CheckpointError(f"checkpoint dtype {name!r} is not supported (supported: {', '.join(_DTYPES)})")
    return _DTYPES[name]


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = [folder / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"shard {f.name} listed in {index.name} is missing from {folder}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}); unifer refuses pickle because loading it "
            "can run arbitrary code. Convert the checkpoint to safetensors (e.g. save_pretrained(..., "
            "safe_serialization=True)) and try again")
    raise CheckpointError(f"no *.safetensors weights found in {folder}")


def iter_weights(folder: Path, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    for path in safetensors_files(folder):
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from None
        with handle as f:
            for name in f.keys():
                yield name, f.get_tensor(name).to(device)
