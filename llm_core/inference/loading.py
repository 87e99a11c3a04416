"""A trained model folder ready to talk: the model on its device, its tokenizer, and how prompts are built and
where generation stops. Shared by the sample stage, the terminal chat and the server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llm_core.data import chat
from llm_core.data.tokenizer import Tokenizer
from llm_core.inference.engine import Engine
from llm_core.model.io import WEIGHTS, load_model
from llm_core.model.transformer import Transformer


def _stage_of(model_dir: Path) -> str:
    return "pretrain" if model_dir.name == "pretrain" else "sft"


def tokenizer_dir_for(model_dir: str | Path) -> Path:
    """The pipeline keeps the tokenizer beside the models (models/tokenizer); an exported folder holds its own."""
    model_dir = Path(model_dir)
    return model_dir if (model_dir / "tokenizer.json").exists() else model_dir.parent / "tokenizer"


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    name: str  # the folder's name: the model id clients ask for

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
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else tokenizer_dir_for(model_dir)
    if not tok_dir.is_dir():
        raise FileNotFoundError(f"no tokenizer in {tok_dir}; run `dvc repro train_tokenizer` first, "
                                "or pass --tokenizer FOLDER")
    tokenizer = Tokenizer.from_dir(tok_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(model_dir, attention=attention).to(dev, dtype=dtype or inference_dtype(dev)).eval()
    if model.cfg.vocab_size < tokenizer.vocab_size:  # the model's may be padded up, never smaller
        raise ValueError(f"{model_dir} has a vocabulary of {model.cfg.vocab_size} but {tok_dir} has "
                         f"{tokenizer.vocab_size}; pass the tokenizer the model was trained with (--tokenizer)")
    return LoadedModel(model, tokenizer, model_dir.resolve().name)
