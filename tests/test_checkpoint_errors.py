"""Broken checkpoints fail with errors that name the file or tensor at fault."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file
from unifer import LLM
from unifer.model.errors import CheckpointError


@pytest.fixture
def ckpt(checkpoint_factory, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(checkpoint_factory("LlamaForCausalLM"), dst)
    return dst


def _load(folder):
    return LLM(model=str(folder), backend="cpu", dtype="float32", num_blocks=64)


def _shards(folder):
    return sorted(folder.glob("*.safetensors"))


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        _load(tmp_path / "nope")


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        _load(ckpt)


def test_unsupported_architecture(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unsupported architecture GPT2LMHeadModel"):
        _load(ckpt)


def test_missing_shard(ckpt):
    assert len(_shards(ckpt)) >= 2
    victim = _shards(ckpt)[-1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        _load(ckpt)


def test_missing_tensor(ckpt):
    for shard in _shards(ckpt):
        tensors = load_file(shard)
        if "model.layers.1.self_attn.k_proj.weight" in tensors:
            del tensors["model.layers.1.self_attn.k_proj.weight"]
            save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lacks tensor\(s\) model.layers.1.self_attn.k_proj.weight"):
        _load(ckpt)


def test_misshaped_tensor(ckpt):
    for shard in _shards(ckpt):
        tensors = load_file(shard)
        if "model.norm.weight" in tensors:
            tensors["model.norm.weight"] = tensors["model.norm.weight"][:-1].clone()
            save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"'model.norm.weight' has shape \(255,\), expected \(256,\)"):
        _load(ckpt)


def test_pickle_checkpoint_refused(ckpt):
    for shard in _shards(ckpt):
        shard.unlink()
    (ckpt / "model.safetensors.index.json").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="refuses pickle"):
        _load(ckpt)


def test_prompt_too_long_rejected_and_nothing_leaks(checkpoint_factory):
    llm = LLM(model=str(checkpoint_factory("LlamaForCausalLM")), backend="cpu", dtype="float32",
              max_model_len=64, num_blocks=64)
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([{"prompt_token_ids": [5] * 80}], use_tqdm=False)
    assert llm.engine.kv.num_free_blocks == llm.engine.num_blocks - 1
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate([{"prompt_token_ids": [5, 100000]}], use_tqdm=False)
