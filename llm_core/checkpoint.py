"""Checkpoints: atomic save, newest-complete lookup, resume, and the final model folder.

A checkpoint is `checkpoints/step_XXXXXXX/` holding
    model.safetensors   weights (tied tensors stored once)
    config.json         the resolved model config
    train_state.pt      optimizer states keyed by parameter name + RNG states (tensors and plain containers only:
                        loads with weights_only)
    state.json          step, tokens, run fingerprint, loader position, metrics so far
    COMPLETE            written last; a folder without it is never loaded
It is written into a hidden temp folder and renamed into place, so a process killed mid-write leaves nothing that
looks loadable. Every parallel mode writes the same full, unsharded format (gathered by `distributed`), so a
checkpoint loads in any mode and in a single process. Loads map to the CPU first; the caller places the tensors.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import safetensors.torch
import torch

from llm_core.config import ModelConfig
from llm_core.model import Transformer

MARKER = "COMPLETE"
PREFIX = "step_"
FAULT_ENV = "LLM_CORE_FAULT"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_weights(directory: Path, cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> None:
    """model.safetensors + config.json from a full state dict (a tied head is stored once, as tok_emb.weight)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()
               if not (cfg.tie_embeddings and k == "lm_head.weight")}
    safetensors.torch.save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")


def write_model(directory: Path, model: Transformer) -> None:
    write_weights(directory, model.cfg, model.state_dict())


def read_config(directory: str | Path, attention: str | None = None) -> ModelConfig:
    """The model config of a folder written by `write_weights` (no weights are read)."""
    directory = Path(directory)
    if not (directory / "model.safetensors").exists():
        raise FileNotFoundError(f"no model in {directory}; run the stage that trains it first "
                                "(`dvc repro pretrain` or `dvc repro sft`)")
    cfg = ModelConfig(**json.loads((directory / "config.json").read_text()))
    if attention is not None:
        cfg.attention = attention
    return cfg


def load_model(directory: str | Path, attention: str | None = None) -> Transformer:
    """A Transformer from a folder with model.safetensors + config.json (a checkpoint or a final model)."""
    directory = Path(directory)
    cfg = read_config(directory, attention)
    model = Transformer(cfg)
    missing, unexpected = safetensors.torch.load_model(model, str(directory / "model.safetensors"), strict=False,
                                                       device="cpu")
    # a tied head has no tensor of its own in the file
    missing = [m for m in missing if not (cfg.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{directory}/model.safetensors does not fit its config.json "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model


def save_final(directory: Path, cfg: ModelConfig, weights: dict[str, torch.Tensor], extra: dict | None = None) -> None:
    """The stage's output model (weights + config) next to its checkpoints, replaced atomically file by file."""
    tmp = directory / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_weights(tmp, cfg, weights)
    if extra:
        (tmp / "train_info.json").write_text(json.dumps(extra, indent=2) + "\n")
    for f in tmp.iterdir():
        os.replace(f, directory / f.name)
    tmp.rmdir()


def fault_point(name: str, step: int) -> None:
    """Crash-test hook: LLM_CORE_FAULT=<name>:<step> SIGKILLs this process here, as a power cut or an OOM killer
    would (no cleanup, no exception handlers), so tests can prove that resume survives a real process death."""
    if os.environ.get(FAULT_ENV) == f"{name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(root: Path, step: int, cfg: ModelConfig, weights: dict[str, torch.Tensor],
                    optimizer_states: list[dict], state: dict, keep: int) -> Path:
    """Write checkpoints/step_XXXXXXX atomically (full, unsharded state) and drop all but the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:07d}"
    tmp = root / f".tmp-{PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_weights(tmp, cfg, weights)
    fault_point("in_checkpoint", step)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizers": optimizer_states, "rng": rng}, tmp / "train_state.pt")
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
    for stale in root.glob(f".tmp-{PREFIX}*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
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


def load_checkpoint(path: Path) -> dict:
    """{"weights": full state dict, "optimizers": name-keyed optimizer states, "rng", "state": state.json},
    all on the CPU; the caller places them (each parallel mode keeps its own share)."""
    if not (path / MARKER).exists():
        raise ValueError(f"{path} has no {MARKER} marker: it was not completely written and cannot be loaded")
    weights = load_model(path).state_dict()
    blob = torch.load(path / "train_state.pt", map_location="cpu", weights_only=True)
    return {"weights": weights, "optimizers": blob["optimizers"], "rng": blob["rng"], "state": read_state(path)}


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
