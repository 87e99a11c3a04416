"""Weights and config between our model folder and a Hugging Face folder of the model's family (Llama, Qwen2,
Mistral: `families.py`; latent attention or experts: DeepSeek-V3, `deepseek.py`).

The model uses Hugging Face's rotate-half RoPE layout and the same module structure, so the mapping is a renaming of
tensors; no weight is permuted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import safetensors.torch
import torch

from llm_core.config import ModelConfig
from llm_core.export import families
from llm_core.export.deepseek import deepseek_config, deepseek_state_dict, is_deepseek
from llm_core.files import atomic_dir, umask_mode, write_json
from llm_core.model.transformer import Transformer

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
}
# biases of imported checkpoints (Qwen2's q/k/v, Llama's attention_bias and mlp_bias)
_LAYER_NAMES.update({k.replace(".weight", ".bias"): v.replace(".weight", ".bias") for k, v in _LAYER_NAMES.items()
                     if k.startswith(("attn.w", "ffn.w"))})
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def hf_config(cfg: ModelConfig, bos_id: int | None = None, eos_id: int | None = None,
              dtype: torch.dtype = torch.float32) -> dict:
    if is_deepseek(cfg):
        return deepseek_config(cfg, bos_id, eos_id, _DTYPE_NAMES[dtype])
    return families.hf_config(cfg, bos_id, eos_id, _DTYPE_NAMES[dtype])


def to_hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    if is_deepseek(model.cfg):
        return deepseek_state_dict(model)
    out = {"model.embed_tokens.weight": model.tok_emb.weight, "model.norm.weight": model.norm.weight}
    if not model.cfg.tie_embeddings:
        out["lm_head.weight"] = model.lm_head.weight
    for i, block in enumerate(model.layers):
        for name, tensor in block.state_dict().items():
            out[f"model.layers.{i}.{_LAYER_NAMES[name]}"] = tensor
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def ours_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our names for a Hugging Face state dict (same tensors, same dtype), checked against the model `cfg` builds:
    every tensor present, none left over, every shape right."""
    reverse = {v: k for k, v in _LAYER_NAMES.items()}
    ours = {"tok_emb.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    if "lm_head.weight" in sd or not cfg.tie_embeddings:
        ours["lm_head.weight"] = sd.get("lm_head.weight")
    for key, tensor in sd.items():
        if key.startswith("model.layers."):
            _, _, i, rest = key.split(".", 3)
            if rest.endswith("rotary_emb.inv_freq"):  # older exports saved the RoPE table; ours is derived
                continue
            if rest not in reverse:
                raise ValueError(f"tensor {key} has no counterpart in llm_core's Transformer (config.json does not "
                                 "announce it: a variant with extra modules cannot be imported)")
            ours[f"layers.{i}.{reverse[rest]}"] = tensor
    with torch.device("meta"):  # the expected names and shapes, without allocating anything
        expected = {k: v.shape for k, v in Transformer(cfg).state_dict().items()
                    if not (cfg.tie_embeddings and k == "lm_head.weight")}
    ours = {k: v for k, v in ours.items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
    missing = [k for k in expected if ours.get(k) is None]
    wrong = [f"{k} {tuple(ours[k].shape)} != {tuple(expected[k])}" for k in expected
             if ours.get(k) is not None and ours[k].shape != expected[k]]
    extra = sorted(set(ours) - set(expected))
    if missing or wrong or extra:
        raise ValueError(f"the weights do not fit config.json (missing {missing[:3]}, wrong shapes {wrong[:3]}, "
                         f"unexpected {extra[:3]})")
    return ours


def from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> Transformer:
    model = Transformer(cfg)
    model.load_state_dict(ours_from_hf(sd, cfg), strict=False)  # a tied head is the embedding: not in the dict
    return model


def _write_tokenizer(tokenizer_dir: Path, out: Path, cfg: ModelConfig) -> tuple[int, int]:
    """Copy the tokenizer files, with the model's context length; returns (bos_id, end_id)."""
    from llm_core.data.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(tokenizer_dir)
    if not all((tokenizer_dir / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{tokenizer_dir} holds a pretrained tiktoken encoding ({tok.name}), not Hugging Face "
                         "tokenizer files; export without --tokenizer and pair the model with that encoding's Hugging "
                         "Face tokenizer (e.g. openai-community/gpt2 for tiktoken:gpt2)")
    if tok.vocab_size > cfg.vocab_size:
        raise ValueError(f"the tokenizer in {tokenizer_dir} has {tok.vocab_size} tokens but the model only "
                         f"{cfg.vocab_size}: it is not the tokenizer this model was trained with")
    shutil.copy(tokenizer_dir / "tokenizer.json", out / "tokenizer.json")
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    config["model_max_length"] = cfg.max_seq_len  # longer inputs would run past the RoPE tables
    write_json(out / "tokenizer_config.json", config)
    return tok.bos_id, tok.end_id


def export_hf(model: Transformer, out_dir: str | Path, tokenizer_dir: str | Path | None = None,
              bos_id: int | None = None, eos_id: int | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write a folder that `LlamaForCausalLM.from_pretrained` (and, with a tokenizer, `AutoTokenizer`) loads.

    With `tokenizer_dir`, bos/eos default to the tokenizer's <|bos|> and <|end|>. The folder is built next to
    `out_dir` and swapped in when complete, so a failed export leaves the previous one intact.
    """
    out = Path(out_dir)
    hf = hf_config(model.cfg, bos_id, eos_id, dtype)  # refuses qk_norm before anything is written
    with atomic_dir(out) as tmp:
        if tokenizer_dir is not None:
            tok_bos, tok_end = _write_tokenizer(Path(tokenizer_dir), tmp, model.cfg)
            bos_id = tok_bos if bos_id is None else bos_id
            eos_id = tok_end if eos_id is None else eos_id
            hf = hf_config(model.cfg, bos_id, eos_id, dtype)
        write_json(tmp / "config.json", hf)
        sd = {k: v.to(dtype) for k, v in to_hf_state_dict(model).items()}
        safetensors.torch.save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        umask_mode(tmp / "model.safetensors")  # save_file makes the file 0600 whatever the umask
        generation = {"bos_token_id": bos_id, "eos_token_id": eos_id}
        if eos_id is not None:
            # a chat turn ends at <|end|>; plain text ends where the next document's <|bos|> would start
            stops = [eos_id] + ([bos_id] if bos_id is not None and bos_id != eos_id else [])
            generation.update(eos_token_id=stops, pad_token_id=eos_id)
        write_json(tmp / "generation_config.json", generation)
    return out


def load_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    single = directory / "model.safetensors"
    if single.is_file():
        return safetensors.torch.load_file(str(single))
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, torch.Tensor] = {}
        for shard in shards:
            sd.update(safetensors.torch.load_file(str(directory / shard)))
        return sd
    raise FileNotFoundError(f"{directory} has no model.safetensors (or sharded index); pytorch_model.bin is not read "
                            "because loading it would unpickle untrusted data")


def read_hf_config(directory: str | Path) -> dict:
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}/config.json not found: not a Hugging Face model folder (download one "
                                "with `huggingface-cli download <repo> --local-dir <folder>`)")
    try:
        return json.loads((directory / "config.json").read_text())
    except ValueError as e:
        raise ValueError(f"{directory}/config.json is not JSON ({e})") from None


def import_hf(directory: str | Path, attention: str = "sdpa", max_seq_len: int | None = None) -> Transformer:
    """A Transformer (fp32) from a Hugging Face folder of a supported family: config.json + model.safetensors (or
    safetensors shards)."""
    directory = Path(directory)
    cfg = families.model_config(read_hf_config(directory), f"{directory}/config.json", max_seq_len, attention)
    return from_hf_state_dict({k: v.float() for k, v in load_hf_weights(directory).items()}, cfg)
