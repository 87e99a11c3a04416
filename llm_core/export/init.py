"""Start from an open model: the `import_model` stage's work.

A Hugging Face folder downloaded beforehand (`model.init_path`; the pipeline never reaches a hub) becomes
`models/init/`:
    model.safetensors + config.json   its weights (renamed, in their own dtype) and architecture (`model.init: hf`)
    tokenizer/                        its tokenizer.json + tokenizer_config.json (`tokenizer.source: hf`)
    init.json                         what was imported: the folder, its family, the sha256 of every file read
`pretrain` continues from those weights (`pretrain.steps: 0` keeps them as they are), `train_tokenizer` copies the
tokenizer. Without `model.init: hf` or `tokenizer.source: hf` the folder is not read and init.json says so; the
stage then costs nothing and changes nothing downstream.

The chat template is the folder's own when it has one. Otherwise ours is used, with our role markers added to the
tokenizer as special tokens; their embedding rows (new rows, or unused rows of a padded vocabulary) start as the
mean of the pretrained rows, the usual choice: a new token then looks like an average token, not like noise.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typing import TYPE_CHECKING

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from llm_core.config import ModelConfig, ParamsError, TokenizerConfig
from llm_core.data.tokenizer import CHAT_TEMPLATE, HF_MARKER, SPECIAL_TOKENS, Tokenizer
from llm_core.export import families
from llm_core.files import atomic_dir, file_sha256, write_json

if TYPE_CHECKING:
    import torch

INFO = "init.json"
_READ = ("config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "chat_template.jinja", "chat_template.json")
TOKENIZER_DIR = "tokenizer"
_ROLE_TOKENS = [t for t in SPECIAL_TOKENS if t != "<|bos|>"]  # ours bar <|bos|>: the folder's separator opens chats
# params.yaml model keys that name the architecture -> the config.json key they must agree with
_SHAPE_KEYS = {"n_layers": "num_hidden_layers", "d_model": "hidden_size", "n_heads": "num_attention_heads",
               "n_kv_heads": "num_key_value_heads", "ffn_hidden": "intermediate_size", "rope_theta": "rope_theta",
               "norm_eps": "rms_norm_eps", "tie_embeddings": "tie_word_embeddings", "qk_norm": "(no q/k norm)"}


def check_params(model: ModelConfig, arch: ModelConfig, where: str) -> None:
    """With model.init: hf the architecture is the folder's: a model.* key of params.yaml that says otherwise is an
    error naming the key (blank keys take the folder's value)."""
    for key, hf_key in _SHAPE_KEYS.items():
        mine = getattr(model, key)
        if mine is not None and mine != getattr(arch, key):
            raise ParamsError(f"params.yaml: model.{key} is {mine} but {where} has {getattr(arch, key)} ({hf_key}); "
                              f"with model.init: hf the architecture comes from the folder: leave model.{key} blank")
    for key, value in (("attention_type", "gqa"), ("ffn", "dense")):
        if getattr(model, key) != value:
            raise ParamsError(f"params.yaml: model.{key} is {getattr(model, key)} but {where} is a {arch.family} "
                              f"model ({value}); set model.{key}: {value}")
    if model.layers:
        raise ParamsError("params.yaml: model.layers overrides blocks, but with model.init: hf every block is the "
                          f"folder's ({where}); set model.layers: []")


def _template_of(folder: Path, config: dict) -> str | None:
    """The folder's chat template: tokenizer_config.json's (one, or the `default` of several), or the
    chat_template.jinja / chat_template.json that newer transformers write beside it."""
    template = config.get("chat_template")
    if isinstance(template, list):
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    if template is None and (folder / "chat_template.json").is_file():
        template = json.loads((folder / "chat_template.json").read_text()).get("chat_template")
    return template


def import_tokenizer(folder: Path, out: Path) -> list[str]:
    """The folder's tokenizer into `out` (a folder `Tokenizer.from_dir` reads); returns the tokens added to it."""
    if (folder / "tokenizer.json").is_file() and not (folder / HF_MARKER).is_file():
        try:  # a folder this project exported: its tokenizer is one of ours, kept as it is (with its fast encoder)
            Tokenizer.from_dir(folder)
            out.mkdir(parents=True, exist_ok=True)
            for name in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(folder / name, out / name)
            return []
        except ValueError:
            pass
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no tokenizer.json (tokenizer.source: hf reads a fast tokenizer); if it has only a "
            "SentencePiece tokenizer.model, convert it once: `python -c \"from transformers import AutoTokenizer; "
            f"AutoTokenizer.from_pretrained('{folder}').save_pretrained('{folder}')\"`")
    config = json.loads((folder / "tokenizer_config.json").read_text()) \
        if (folder / "tokenizer_config.json").is_file() else {}
    if (folder / "special_tokens_map.json").is_file():  # older folders name bos / eos there only
        for key, value in json.loads((folder / "special_tokens_map.json").read_text()).items():
            config.setdefault(key, value)
    hf = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    template, added = _template_of(folder, config), []
    if template is None:
        separator = config.get("bos_token") or config.get("eos_token")
        separator = separator.get("content") if isinstance(separator, dict) else separator
        if separator is None:
            raise ValueError(f"{folder}/tokenizer_config.json names no bos_token or eos_token, and a chat or "
                             "document needs one to open with")
        added = [t for t in _ROLE_TOKENS if hf.token_to_id(t) is None]
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
        template = CHAT_TEMPLATE.replace("{{ '<|bos|>' }}", "{{ " + json.dumps(separator) + " }}")
        config["additional_special_tokens"] = list(config.get("additional_special_tokens") or []) + added
    config["chat_template"] = template
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(hf.to_str())
    write_json(out / "tokenizer_config.json", config)
    write_json(out / HF_MARKER, {"name": folder.name, "folder": str(folder),
                                 "chat_template": "ours, role tokens added" if added else "the folder's"})
    return added


def _grow_vocab(weights: dict[str, torch.Tensor], cfg: ModelConfig, pretrained: int, new_ids: list[int]):
    """Embedding (and untied head) rows for the ids of added tokens: the mean of the `pretrained` rows; the matrices
    grow when an id lies past them."""
    import torch

    size = max([cfg.vocab_size] + [i + 1 for i in new_ids])
    for name in ("tok_emb.weight", "lm_head.weight"):
        if name not in weights:
            continue
        w = weights[name]
        if size > w.shape[0]:
            w = torch.cat([w, w.new_zeros(size - w.shape[0], w.shape[1])])
        w[new_ids] = w[:pretrained].float().mean(0).to(w.dtype)
        weights[name] = w
    return size


def import_init(model: ModelConfig, tokenizer: TokenizerConfig, out: Path) -> dict:
    """Write models/init (see the module docstring) atomically; returns init.json's content."""
    info: dict = {"init": model.init or None, "tokenizer": tokenizer.source}
    hf_tokenizer = tokenizer.source == "hf"
    if model.init == "hf" and not hf_tokenizer:
        raise ParamsError("params.yaml: model.init: hf needs tokenizer.source: hf (the checkpoint's embeddings are "
                          "indexed by its own tokenizer's ids)")
    with atomic_dir(out) as tmp:
        if model.init == "hf" or hf_tokenizer:
            folder = Path(model.init_path)
            if not folder.is_dir():
                raise FileNotFoundError(f"params.yaml: model.init_path {folder} is not a folder; download the model "
                                        "first, e.g. `huggingface-cli download HuggingFaceTB/SmolLM2-135M "
                                        "--local-dir hf/SmolLM2-135M`")
            info["folder"] = str(folder)
        if model.init == "hf":  # the architecture first: a checkpoint that cannot be imported stops here
            # imported here: without weights to convert the stage needs no torch, whose import is most of its time
            from llm_core.export.convert import load_hf_weights, ours_from_hf, read_hf_config
            from llm_core.model.io import write_weights

            where = f"{folder}/config.json"
            arch = families.model_config(read_hf_config(folder), where, model.max_seq_len, model.attention)
            check_params(model, arch, where)
        if hf_tokenizer:
            added = import_tokenizer(folder, tmp / TOKENIZER_DIR)
            info["added_tokens"] = added
        if model.init == "hf":
            weights = ours_from_hf(load_hf_weights(folder), arch)
            tok = Tokenizer.from_dir(tmp / TOKENIZER_DIR)
            new_ids = [tok.special_ids[t] for t in added]
            if tok.vocab_size - len(added) > arch.vocab_size:
                raise ValueError(f"the tokenizer of {folder} has {tok.vocab_size - len(added)} tokens but its "
                                 f"config.json only {arch.vocab_size} embeddings: they do not belong together")
            if new_ids:
                arch.vocab_size = _grow_vocab(weights, arch, min(new_ids), new_ids)
            # a chat model when the folder brings its own chat template (an instruct model, or a base model that
            # ships one: llm-chat can switch modes either way)
            write_weights(tmp, arch, weights, {"chat": not added, "stage": "import_model"})
            info.update(family=arch.family, num_params=arch.num_params())
        if "folder" in info:  # provenance: exactly which files were read
            read = [p for p in sorted(folder.iterdir()) if p.is_file() and (p.name in _READ or (
                model.init == "hf" and p.name.endswith(".safetensors")))]
            info["files"] = {p.name: file_sha256(p) for p in read}
        write_json(tmp / INFO, info)
    return info
