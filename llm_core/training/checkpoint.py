"""Checkpoints: atomic save, newest-complete lookup, resume, and the final model folder.

A checkpoint is `checkpoints/step_XXXXXXX/` holding
    model.safetensors   weights (tied tensors stored once)
    config.json         the resolved model config
    model_info.json     what the weights are trained for (`chat`), as in the final model
    train_state.pt      optimizer states keyed by parameter name, RNG states and the fp16 loss scaler's state
                        (tensors and plain containers only: loads with weights_only)
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

import torch

from llm_core.config import ModelConfig
from llm_core.files import fsync_dir, write_json
from llm_core.model.io import load_model, write_weights

MARKER = "COMPLETE"
PREFIX = "step_"
FAULT_ENV = "LLM_CORE_FAULT"


def save_final(directory: Path, cfg: ModelConfig, weights: dict[str, torch.Tensor], extra: dict | None = None,
               info: dict | None = None) -> None:
    """The stage's output model (weights + config, `info` as model_info.json) next to its checkpoints, replaced
    atomically file by file."""
    tmp = directory / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_weights(tmp, cfg, weights, info)
    if extra:
        write_json(tmp / "train_info.json", extra)
    for f in tmp.iterdir():
        os.replace(f, directory / f.name)
    tmp.rmdir()


def fault_point(name: str, step: int) -> None:
    """Crash-test hook: LLM_CORE_FAULT=<name>:<step> SIGKILLs this process here, as a power cut or an OOM killer
    would (no cleanup, no exception handlers), so tests can prove that resume survives a real process death."""
    if os.environ.get(FAULT_ENV) == f"{name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(root: Path, step: int, cfg: ModelConfig, weights: dict[str, torch.Tensor],
                    optimizer_states: list[dict], state: dict, keep: int, scaler: dict | None = None,
                    info: dict | None = None) -> Path:
    """Write checkpoints/step_XXXXXXX atomically (full, unsharded state) and drop all but the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:07d}"
    tmp = root / f".tmp-{PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_weights(tmp, cfg, weights, info)
    fault_point("in_checkpoint", step)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizers": optimizer_states, "rng": rng, "scaler": scaler}, tmp / "train_state.pt")
    write_json(tmp / "state.json", state)
    for f in tmp.iterdir():
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    (tmp / MARKER).write_text("ok\n")
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
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
    return {"weights": weights, "optimizers": blob["optimizers"], "rng": blob["rng"], "scaler": blob.get("scaler"),
            "state": read_state(path)}


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
