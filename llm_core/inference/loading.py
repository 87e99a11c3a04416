"""A trained model folder ready to talk: the model on its device, its tokenizer, whether it is a chat model, and how
prompts are built and where generation stops. Shared by the sample stage, the terminal chat and the server.

Which tokenizer: a folder's own `tokenizer.json` (an exported model), else the `tokenizer/` folder beside it or above
it, so `models/sft`, `models/sft/best` and `models/sft/checkpoints/step_0000700` all find `models/tokenizer`.
Chat or base: the folder's `model_info.json` (training writes it); a folder without one (older runs, imports) is a
base model when it or a folder above it is named `pretrain`, else a chat model (the pipeline's end product).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_core.data import chat
from llm_core.data.tokenizer import Tokenizer
from llm_core.inference.engine import Engine
from llm_core.model.io import WEIGHTS, load_model, read_info
from llm_core.model.transformer import Transformer

TOKENIZER_FILE = "tokenizer.json"
# how far up a tokenizer/ folder is looked for: models/<stage>/checkpoints/step_N -> models/
TOKENIZER_LEVELS = 3


def _stage_of(model_dir: Path) -> str:
    return "pretrain" if model_dir.name == "pretrain" else "sft"


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when it is inside it."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path.absolute())


def tokenizer_candidates(model_dir: str | Path) -> list[Path]:
    """Where the tokenizer of a model folder may be, nearest first."""
    model_dir = Path(model_dir).absolute()
    return [model_dir] + [parent / "tokenizer" for parent in model_dir.parents[:TOKENIZER_LEVELS]]


def tokenizer_dir_for(model_dir: str | Path) -> Path | None:
    """The nearest tokenizer of a model folder (its own, or a tokenizer/ folder beside it or above it), or None."""
    return next((d for d in tokenizer_candidates(model_dir) if (d / TOKENIZER_FILE).is_file()), None)


def is_chat_model(model_dir: str | Path) -> bool:
    """Whether the weights were trained on chats in the template (see the module's docstring for older folders)."""
    info = read_info(model_dir)
    if isinstance(info.get("chat"), bool):
        return info["chat"]
    model_dir = Path(model_dir).absolute()
    return "pretrain" not in [model_dir.name] + [p.name for p in model_dir.parents[:TOKENIZER_LEVELS - 1]]


def find_model(path: str, default: str, stage_name: str | None = None) -> Path:
    """The model folder a command was pointed at (`--model`), or an error naming the folder looked for. Only the
    default folder, inside a repository (a dvc.yaml here), is a pipeline output not made yet: only then is
    `dvc repro` the fix; anything else is a path to check."""
    model_dir = Path(path)
    if (model_dir / WEIGHTS).is_file():
        return model_dir
    where = _shown(model_dir)
    if path == default:
        if Path("dvc.yaml").is_file():
            stage = stage_name or _stage_of(model_dir)
            raise FileNotFoundError(f"no model in {where} yet (the default --model); run `dvc repro {stage}` "
                                    "(or `make repro`) first, or pass --model FOLDER")
        raise FileNotFoundError(f"no model in {model_dir.absolute()} (the default --model {path}, relative to the "
                                f"working directory {os.getcwd()}, which has no dvc.yaml); run from the repository's "
                                "root, or pass --model FOLDER")
    if model_dir.is_file():
        raise FileNotFoundError(f"--model {path} is a file, not a model folder; pass the folder that holds "
                                f"{WEIGHTS} and config.json")
    if not model_dir.exists():
        raise FileNotFoundError(f"no model folder {where} (--model {path}); check the path: model folders are "
                                "models/sft, models/pretrain, models/<stage>/best, models/<stage>/checkpoints/step_N")
    inside = sorted(p.name for p in model_dir.iterdir() if (p / WEIGHTS).is_file())
    if inside:
        pick = str(Path(path) / inside[-1])
        raise FileNotFoundError(f"{where} holds no {WEIGHTS} itself, only model folders inside it "
                                f"({', '.join(inside[-3:])}); pass one of them, e.g. --model {pick}")
    raise FileNotFoundError(f"{where} has no {WEIGHTS}; pass a folder written by training (models/sft, "
                            "models/pretrain, a checkpoint) or by an import")


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    name: str  # the folder's name: the model id clients ask for
    chat: bool = True  # trained on chats in the template (else a base model: plain continuation)

    @property
    def stop_ids(self) -> list[int]:
        """Where a plain continuation ends: <|end|>, or <|bos|> (a new document)."""
        return [self.tokenizer.end_id, self.tokenizer.bos_id]

    @property
    def chat_stop_ids(self) -> list[int]:
        """Where an assistant turn ends: <|end|>, or any other marker (a model that writes <|user|> is inventing
        the next turn, which is not part of its answer)."""
        return self.special_ids

    @property
    def special_ids(self) -> list[int]:
        return sorted(self.tokenizer.special_ids.values())

    @property
    def context(self) -> int:
        """The most tokens the model reads at once (a longer prompt loses its start)."""
        return self.model.cfg.max_seq_len

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        return chat.render(messages, self.tokenizer, add_generation_prompt=True)[0]

    def plain_prompt(self, text: str) -> list[int]:
        return [self.tokenizer.bos_id] + self.tokenizer.encode(text)

    def engine(self, max_batch: int, seed: int = 0) -> Engine:
        """A batched decoder for this model: special tokens unpenalised, BOS kept by the rolling window, only
        ids the tokenizer can write drawn."""
        return Engine(self.model, max_batch=max_batch, special_ids=self.special_ids, bos_id=self.tokenizer.bos_id,
                      seed=seed, vocab_size=self.tokenizer.vocab_size)


def inference_dtype(device: torch.device) -> torch.dtype:
    """bf16 weights on CUDA (half the memory and bandwidth of fp32, what decoding is bound by; the model keeps its
    RoPE tables fp32 and the sampler upcasts the logits), fp32 elsewhere (CPUs have no fast bf16 matmul)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load(model_dir: str | Path, tokenizer_dir: str | Path | None = None, device: str | None = None,
         attention: str | None = None, dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a model folder and its tokenizer; a missing one says which stage makes it. `dtype` of the weights:
    default `inference_dtype(device)`."""
    model_dir = Path(model_dir)
    if not (model_dir / WEIGHTS).exists():
        raise FileNotFoundError(f"no model in {model_dir}; run `dvc repro {_stage_of(model_dir)}` "
                                "(or `make repro`) first")
    if tokenizer_dir is not None:
        tok_dir = Path(tokenizer_dir)
        if not (tok_dir / TOKENIZER_FILE).is_file():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} in {_shown(tok_dir)} (--tokenizer); check the path: the "
                                    "pipeline's tokenizer is models/tokenizer (`dvc repro train_tokenizer`)")
    else:
        tok_dir = tokenizer_dir_for(model_dir)
        if tok_dir is None:
            looked = ", ".join(_shown(d) for d in tokenizer_candidates(model_dir))
            raise FileNotFoundError(f"no tokenizer for {_shown(model_dir)} (looked for {TOKENIZER_FILE} in {looked}); "
                                    "pass --tokenizer FOLDER (the pipeline's is models/tokenizer, made by "
                                    "`dvc repro train_tokenizer`)")
    tokenizer = Tokenizer.from_dir(tok_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(model_dir, attention=attention).to(dev, dtype=dtype or inference_dtype(dev)).eval()
    if model.cfg.vocab_size < tokenizer.vocab_size:  # the model's may be padded up, never smaller
        raise ValueError(f"{model_dir} has a vocabulary of {model.cfg.vocab_size} but {tok_dir} has "
                         f"{tokenizer.vocab_size}; pass the tokenizer the model was trained with (--tokenizer)")
    return LoadedModel(model, tokenizer, model_dir.resolve().name, is_chat_model(model_dir))
