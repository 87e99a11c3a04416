"""A model folder: `model.safetensors` + `config.json`, and `model_info.json` when training wrote it (what the weights
were trained for: `{"chat": true}` after SFT, so `llm-chat` knows whether to use the chat template). The one format
for final models and checkpoint weights; no pickle is ever read from it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from llm_core.config import ModelConfig
from llm_core.files import file_sha256, umask_mode, write_json
from llm_core.model.transformer import Transformer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
INFO = "model_info.json"


def write_weights(directory: Path, cfg: ModelConfig, weights: dict[str, torch.Tensor],
                  info: dict | None = None) -> None:
    """model.safetensors + config.json from a full state dict (a tied head is stored once, as tok_emb.weight), and
    model_info.json when `info` is given."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()
               if not (cfg.tie_embeddings and k == "lm_head.weight")}
    safetensors.torch.save_file(tensors, str(directory / WEIGHTS))
    umask_mode(directory / WEIGHTS)  # save_file makes the file 0600 whatever the umask
    write_json(directory / CONFIG, cfg.to_dict())
    if info is not None:
        write_json(directory / INFO, info)


def read_info(directory: str | Path) -> dict:
    """What model_info.json says ({} for a folder written without one, or an unreadable one: it is advice, never
    needed to load the weights)."""
    try:
        info = json.loads((Path(directory) / INFO).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def write_model(directory: Path, model: Transformer) -> None:
    write_weights(directory, model.cfg, model.state_dict())


def read_config(directory: str | Path, attention: str | None = None) -> ModelConfig:
    """The model config of a folder written by `write_weights` (no weights are read)."""
    directory = Path(directory)
    if not (directory / WEIGHTS).exists():
        raise FileNotFoundError(f"no model in {directory}; run the stage that trains it first "
                                "(`dvc repro pretrain` or `dvc repro sft`)")
    try:
        cfg = ModelConfig(**json.loads((directory / CONFIG).read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{directory}/{CONFIG} is missing or not a model config ({e}); retrain the model") from None
    if attention is not None:
        cfg.attention = attention
    return cfg


def load_model(directory: str | Path, attention: str | None = None) -> Transformer:
    """A Transformer from a folder with model.safetensors + config.json (a checkpoint or a final model)."""
    directory = Path(directory)
    cfg = read_config(directory, attention)
    model = Transformer(cfg)
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(directory / WEIGHTS), strict=False,
                                                           device="cpu")
    except (RuntimeError, OSError, safetensors.SafetensorError) as e:
        raise ValueError(f"{directory}/{WEIGHTS} cannot be read as weights for its {CONFIG} ({e}); "
                         "retrain the model") from None
    # a tied head has no tensor of its own in the file
    missing = [m for m in missing if not (cfg.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{directory}/{WEIGHTS} does not fit its {CONFIG} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model


def weights_hash(directory: str | Path) -> str:
    """Identity of a model folder's weights and config (what a fine-tune started from)."""
    digests = "".join(file_sha256(Path(directory) / name) for name in (WEIGHTS, CONFIG))
    return hashlib.sha256(digests.encode()).hexdigest()[:16]
