"""Checkpoints: atomic save, newest-complete lookup, resume, and the final model folder.

A checkpoint is `checkpoints/step_XXXXXXX/` holding
    model.safetensors   weights (tied tensors stored once)
    config.json         the resolved model config
    train_state.pt      optimizer states + RNG states (tensors and plain containers only: loads with weights_only)
    state.json          step, tokens, run fingerprint, loader position, metrics so far
    COMPLETE            written last; a folder without it is never loaded
It is written into a hidden temp folder and renamed into place, so a process killed mid-write leaves nothing that
looks loadable. Loads map to the CPU first; the caller moves the model where it belongs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import safetensors.torch
import torch

from llm_core.config import ModelConfig
from llm_core.model import Transformer

MARKER = "COMPLETE"
PREFIX = "step_"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_model(directory: Path, model: Transformer) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_model(model, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")


def load_model(directory: str | Path, attention: str | None = None) -> Transformer:
    """A Transformer from a folder with model.safetensors + config.json (a checkpoint or a final model)."""
    directory = Path(directory)
    if not (directory / "model.safetensors").exists():
        raise FileNotFoundError(f"no model in {directory}; run the stage that trains it first "
                                "(`dvc repro pretrain` or `dvc repro sft`)")
    cfg = ModelConfig(**json.loads((directory / "config.json").read_text()))
    if attention is not None:
        cfg.attention = attention
    model = Transformer(cfg)
    missing, unexpected = safetensors.torch.load_model(model, str(directory / "model.safetensors"), strict=False,
                                                       device="cpu")
    # a tied head has no tensor of its own in the file
    missing = [m for m in missing if not (cfg.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{directory}/model.safetensors does not fit its config.json "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model


def save_final(directory: Path, model: Transformer, extra: dict | None = None) -> None:
    """The stage's output model (weights + config) next to its checkpoints, replaced atomically file by file."""
    tmp = directory / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_model(tmp, model)
    if extra:
        (tmp / "train_info.json").write_text(json.dumps(extra, indent=2) + "\n")
    for f in tmp.iterdir():
        os.replace(f, directory / f.name)
    tmp.rmdir()


def save_checkpoint(root: Path, step: int, model: Transformer, optimizers: list, state: dict, keep: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:07d}"
    tmp = root / f".tmp-{PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_model(tmp, model)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizers": [o.state_dict() for o in optimizers], "rng": rng}, tmp / "train_state.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    for f in tmp.iterdir():
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    (tmp / MARKER).write_text("ok\n")
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / MARKER).exists())


def latest_checkpoint(root: Path) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1] if done else None


def read_state(path: Path) -> dict:
    return json.loads((path / "state.json").read_text())


def load_checkpoint(path: Path, model: Transformer, optimizers: list) -> dict:
    """Restore weights, optimizer and RNG state in place; returns state.json."""
    loaded = load_model(path, attention=model.cfg.attention)
    model.load_state_dict(loaded.state_dict())
    blob = torch.load(path / "train_state.pt", map_location="cpu", weights_only=True)
    if len(blob["optimizers"]) != len(optimizers):
        raise ValueError(f"{path}: checkpoint has {len(blob['optimizers'])} optimizer(s), this run {len(optimizers)}")
    for opt, sd in zip(optimizers, blob["optimizers"]):
        opt.load_state_dict(sd)
    torch.set_rng_state(blob["rng"]["cpu"])
    if "cuda" in blob["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
    return read_state(path)
