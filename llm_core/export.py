"""Hugging Face interop: our model folder <-> a `LlamaForCausalLM` folder (or, for models with latent attention or
experts, a `DeepseekV3ForCausalLM` folder: `export_deepseek.py`), from Python or one command.

    python -m llm_core.export models/sft exports/sft-hf --tokenizer models/tokenizer    # ours -> Llama folder
    python -m llm_core.export --from-hf exports/sft-hf models/imported                  # Llama folder -> ours

The exported folder holds config.json, model.safetensors, generation_config.json and, with --tokenizer,
tokenizer.json + tokenizer_config.json (special tokens and the chat template), so `LlamaForCausalLM.from_pretrained`,
`AutoTokenizer.from_pretrained` and `apply_chat_template` work on it, as do tools that read this layout (vLLM,
llama.cpp's converter).

The model uses Hugging Face's rotate-half RoPE layout and the same module structure, so the mapping is a renaming of
tensors; no weight is permuted. QK-norm has no Llama equivalent, so such models are refused. Imports read Llama folders.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import safetensors.torch
import torch

from llm_core.config import ModelConfig
from llm_core.export_deepseek import deepseek_config, deepseek_state_dict, is_deepseek
from llm_core.files import umask_mode, write_json
from llm_core.model.io import load_model, write_model
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
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def hf_config(cfg: ModelConfig, bos_id: int | None = None, eos_id: int | None = None,
              dtype: torch.dtype = torch.float32) -> dict:
    if is_deepseek(cfg):
        return deepseek_config(cfg, bos_id, eos_id, _DTYPE_NAMES[dtype])
    if cfg.qk_norm:
        raise ValueError("model.qk_norm has no LlamaForCausalLM equivalent; export a model trained without it")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_seq_len,
        # transformers < 5 reads rope_theta, 5.x reads rope_parameters: both, so either version loads the folder
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "initializer_range": cfg.init_std,
        "torch_dtype": _DTYPE_NAMES[dtype], "dtype": _DTYPE_NAMES[dtype],
        "bos_token_id": bos_id, "eos_token_id": eos_id,
    }


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


def from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> Transformer:
    model = Transformer(cfg)
    reverse = {v: k for k, v in _LAYER_NAMES.items()}
    ours = {"tok_emb.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    ours["lm_head.weight"] = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    for key, tensor in sd.items():
        if key.startswith("model.layers."):
            _, _, i, rest = key.split(".", 3)
            if rest.endswith("rotary_emb.inv_freq"):  # older exports saved the RoPE table; ours is derived
                continue
            if rest not in reverse:
                raise ValueError(f"tensor {key} has no counterpart in llm_core's Transformer (a Llama variant with "
                                 "biases or extra modules cannot be imported)")
            ours[f"layers.{i}.{reverse[rest]}"] = tensor
    model.load_state_dict(ours)
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
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _load_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
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


def import_hf(directory: str | Path, attention: str = "sdpa") -> Transformer:
    """A Transformer (fp32) from a Llama folder: config.json + model.safetensors (or safetensors shards)."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}/config.json not found: not a Hugging Face model folder")
    hf = json.loads((directory / "config.json").read_text())
    if hf.get("model_type") != "llama":
        raise ValueError(f"{directory}: model_type {hf.get('model_type')!r} is not llama")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"{directory}: RoPE scaling {rope.get('rope_type', rope.get('type'))!r} is not supported; "
                         "only plain RoPE models can be imported")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ValueError(f"{directory}: {key}=true is not supported (llm_core's Transformer has no biases)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{directory}: hidden_act {hf['hidden_act']!r} is not supported (SwiGLU uses silu)")
    n_heads = hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hf["hidden_size"] // n_heads):
        raise ValueError(f"{directory}: head_dim {hf['head_dim']} != hidden_size / num_attention_heads; "
                         "llm_core's Transformer derives the head size from the width")
    cfg = ModelConfig(
        preset="tiny", n_layers=hf["num_hidden_layers"], d_model=hf["hidden_size"], n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads, ffn_hidden=hf["intermediate_size"],
        max_seq_len=hf["max_position_embeddings"],
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))), norm_eps=hf["rms_norm_eps"],
        tie_embeddings=hf.get("tie_word_embeddings", False), qk_norm=False,
        init_std=hf.get("initializer_range", 0.02), attention=attention,
    ).resolved(hf["vocab_size"])
    sd = {k: v.float() for k, v in _load_hf_weights(directory).items()}
    return from_hf_state_dict(sd, cfg)


def _verify(model: Transformer, folder: Path) -> float:
    """Max |logit difference| between our model and the transformers model (Llama / DeepSeek-V3) in `folder`."""
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    x = torch.randint(0, model.cfg.vocab_size, (1, min(32, model.cfg.max_seq_len)))
    with torch.no_grad():
        return (hf(x).logits - model.float().eval()(x)).abs().max().item()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m llm_core.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="our model folder (models/sft, models/pretrain, a checkpoint step_*), "
                                           "or with --from-hf a Llama folder")
    ap.add_argument("dst", type=Path, help="folder to write (replaced if it exists)")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer folder to include (models/tokenizer)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weight dtype of the export")
    ap.add_argument("--verify", action="store_true",
                    help="load the export with transformers and compare its logits with ours")
    ap.add_argument("--from-hf", action="store_true", help="import: src is a Llama folder, dst becomes our format")
    args = ap.parse_args(argv)
    if args.from_hf:
        model = import_hf(args.src)
        write_model(args.dst, model)
        for name in TOKENIZER_FILES:
            if (args.src / name).is_file():
                shutil.copy(args.src / name, args.dst / name)
        print(f"imported {args.src} -> {args.dst} ({model.num_params():,} parameters)")
        return
    try:
        model = load_model(args.src)
        out = export_hf(model, args.dst, args.tokenizer, dtype=DTYPES[args.dtype])
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"export failed: {e}")
    print(f"exported {args.src} -> {out} ({model.num_params():,} parameters, {args.dtype})")
    if args.verify:
        diff = _verify(model, out)
        print(f"transformers {json.loads((out / 'config.json').read_text())['architectures'][0]} vs llm_core: "
              f"max |logit diff| = {diff:.2e}")
        if args.dtype == "fp32" and diff > 1e-3:
            sys.exit("export failed verification: logits differ")


if __name__ == "__main__":
    main()
