"""Hugging Face (Llama) interop: our checkpoint <-> a `LlamaForCausalLM` folder.

The model uses Hugging Face's rotate-half RoPE layout and the same module structure, so the mapping is a
renaming of tensors; no weight is permuted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import safetensors.torch
import torch

from llm_core.config import ModelConfig
from llm_core.model import Transformer

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


def hf_config(cfg: ModelConfig, bos_id: int | None = None, eos_id: int | None = None) -> dict:
    if cfg.qk_norm:
        raise ValueError("model.qk_norm has no LlamaForCausalLM equivalent; export a model trained without it")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_seq_len, "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
        "bos_token_id": bos_id, "eos_token_id": eos_id,
    }


def to_hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    out = {"model.embed_tokens.weight": model.tok_emb.weight, "model.norm.weight": model.norm.weight}
    if not model.cfg.tie_embeddings:
        out["lm_head.weight"] = model.lm_head.weight
    for i, block in enumerate(model.layers):
        for name, tensor in block.state_dict().items():
            out[f"model.layers.{i}.{_LAYER_NAMES[name]}"] = tensor
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> Transformer:
    model = Transformer(cfg)
    reverse = {v: k for k, v in _LAYER_NAMES.items()}
    ours = {"tok_emb.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    ours["lm_head.weight"] = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    for key, tensor in sd.items():
        if key.startswith("model.layers."):
            _, _, i, rest = key.split(".", 3)
            ours[f"layers.{i}.{reverse[rest]}"] = tensor
    model.load_state_dict(ours)
    return model


def export_hf(model: Transformer, out_dir: str | Path, tokenizer_dir: str | Path | None = None,
              bos_id: int | None = None, eos_id: int | None = None) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files) that `LlamaForCausalLM.from_pretrained` loads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config(model.cfg, bos_id, eos_id), indent=2) + "\n")
    safetensors.torch.save_file(to_hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(Path(tokenizer_dir) / name, out / name)
    return out


def import_hf(directory: str | Path, attention: str = "sdpa") -> Transformer:
    """A Transformer from a Llama folder (config.json + model.safetensors)."""
    directory = Path(directory)
    hf = json.loads((directory / "config.json").read_text())
    if hf.get("model_type") != "llama":
        raise ValueError(f"{directory}: model_type {hf.get('model_type')!r} is not llama")
    cfg = ModelConfig(
        preset="tiny", n_layers=hf["num_hidden_layers"], d_model=hf["hidden_size"],
        n_heads=hf["num_attention_heads"], n_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
        ffn_hidden=hf["intermediate_size"], max_seq_len=hf["max_position_embeddings"],
        rope_theta=float(hf.get("rope_theta", 10000.0)), norm_eps=hf["rms_norm_eps"],
        tie_embeddings=hf.get("tie_word_embeddings", False), qk_norm=False, attention=attention,
    ).resolved(hf["vocab_size"])
    sd = safetensors.torch.load_file(str(directory / "model.safetensors"))
    return from_hf_state_dict(sd, cfg)
