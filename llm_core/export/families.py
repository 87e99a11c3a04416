"""Hugging Face families with our block layout: a folder's config.json <-> ModelConfig.

Llama (as transformers writes it today: `rope_parameters` or the older `rope_scaling`, Llama 3's `llama3` RoPE
scaling, `attention_bias`, `mlp_bias`, tied or untied head), Qwen2 (biases on q/k/v, none on the output projection)
and Mistral share one block: pre-norm RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU. Importing one reads
the shape from config.json and records the family, so that export writes the same family back (a fine-tuned Qwen2
stays a Qwen2 folder). Anything the Transformer cannot compute exactly is refused with a message that names it: other
families, other RoPE scalings, other activations, a head size not equal to hidden_size / heads, and a sliding window
shorter than the context (attention here always sees the whole context; a Mistral whose window covers
`model.max_seq_len` computes the same function and is accepted).
"""

from __future__ import annotations

from llm_core.config import ModelConfig
from llm_core.config.model import LLAMA3_ROPE_KEYS

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
# transformers' defaults (LlamaConfig, Qwen2Config, MistralConfig) for keys a config.json may leave out
_DEFAULTS = {
    "llama": dict(max_position_embeddings=2048, rope_theta=10000.0, sliding_window=None),
    "qwen2": dict(max_position_embeddings=32768, rope_theta=10000.0, sliding_window=None),
    "mistral": dict(max_position_embeddings=4096 * 32, rope_theta=10000.0, sliding_window=4096),
}
# what some common families have that this Transformer does not, for the refusal message
_LACKS = {
    "gpt2": "learned absolute position embeddings, LayerNorm with biases, a GELU MLP and fused c_attn weights",
    "gpt_neox": "LayerNorm, parallel attention and MLP, partial rotary embeddings and fused query_key_value weights",
    "gemma": "RMSNorm scaled by (1 + weight), embeddings scaled by sqrt(hidden_size) and a GELU-gated feed-forward",
    "gemma2": "RMSNorm scaled by (1 + weight), post-norms, logit soft-capping and sliding-window layers",
    "gemma3": "RMSNorm scaled by (1 + weight), post-norms, q/k norms and sliding-window layers",
    "phi3": "fused qkv_proj and gate_up_proj weights",
    "qwen3": "a head size decoupled from hidden_size / num_attention_heads",
    "mixtral": "a mixture of experts without shared experts and softmax top-2 routing",
    "falcon": "LayerNorm, parallel attention and MLP and a GELU MLP",
    "opt": "learned absolute position embeddings, LayerNorm and a ReLU MLP",
}


def _refuse(where: str, what: str) -> None:
    raise ValueError(f"{where}: {what}")


def _rope(hf: dict, family: str, where: str) -> tuple[float, dict | None]:
    """(rope_theta, Llama 3 scaling or None) from transformers 5's `rope_parameters` or 4.x's rope_theta +
    rope_scaling."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", hf.get("rope_theta", _DEFAULTS[family]["rope_theta"])))
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        _refuse(where, "partial_rotary_factor != 1 is not supported (RoPE rotates the whole head here)")
    if kind == "default":
        return theta, None
    if kind == "llama3" and family == "llama":
        missing = [k for k in LLAMA3_ROPE_KEYS if k not in params]
        if missing:
            _refuse(where, f"rope_type llama3 without {', '.join(missing)}")
        return theta, {"rope_type": "llama3", **{k: params[k] for k in LLAMA3_ROPE_KEYS}}
    _refuse(where, f"RoPE scaling {kind!r} is not supported; llm_core implements plain RoPE and Llama 3's "
                   "'llama3' scaling")


def _sliding_window(hf: dict, family: str) -> int | None:
    """The window of the layers that slide, or None when every layer sees its whole context."""
    window = hf.get("sliding_window", _DEFAULTS[family]["sliding_window"])
    if family == "mistral" or window is None:
        return window
    if family == "qwen2":
        types = hf.get("layer_types")
        if types is not None:
            return window if "sliding_attention" in types else None
        slides = hf.get("use_sliding_window", False) and hf["num_hidden_layers"] > hf.get("max_window_layers", 28)
        return window if slides else None
    return None


def model_config(hf: dict, where: str, max_seq_len: int | None = None, attention: str = "sdpa") -> ModelConfig:
    """The resolved ModelConfig of a Hugging Face config.json (`where` names it in errors). `max_seq_len` caps the
    context below the folder's max_position_embeddings (RoPE tables, and a Mistral window that must cover it)."""
    family = hf.get("model_type")
    if family not in ARCHITECTURES:
        lacks = f" ({family} has {_LACKS[family]}, which llm_core's Transformer does not)" if family in _LACKS else ""
        _refuse(where, f"model_type {family!r} is not supported: llm_core imports the families "
                       f"{', '.join(sorted(ARCHITECTURES))}{lacks}")
    if hf.get("hidden_act", "silu") != "silu":
        _refuse(where, f"hidden_act {hf['hidden_act']!r} is not supported (the SwiGLU feed-forward uses silu)")
    n_heads, width = hf["num_attention_heads"], hf["hidden_size"]
    if hf.get("head_dim") not in (None, width // n_heads) or width % n_heads:
        _refuse(where, f"head_dim {hf.get('head_dim')} != hidden_size / num_attention_heads = {width} / {n_heads}: "
                       "llm_core's Transformer derives the head size from the width")
    theta, scaling = _rope(hf, family, where)
    context = hf.get("max_position_embeddings", _DEFAULTS[family]["max_position_embeddings"])
    if max_seq_len is not None:
        if max_seq_len > context:
            raise ValueError(f"params.yaml: model.max_seq_len ({max_seq_len}) exceeds the max_position_embeddings "
                             f"({context}) of {where}; leave it blank (null) or lower it")
        context = max_seq_len
    window = _sliding_window(hf, family)
    if window is not None and window < context:
        _refuse(where, f"sliding_window={window} is shorter than the context ({context} positions) and llm_core's "
                       f"attention has no sliding window; set model.max_seq_len to at most {window}, so that every "
                       "position sees its whole context within one window")
    biases = {"llama": dict(qkv_bias=bool(hf.get("attention_bias", False)),
                            out_bias=bool(hf.get("attention_bias", False)), mlp_bias=bool(hf.get("mlp_bias", False))),
              "qwen2": dict(qkv_bias=True), "mistral": {}}[family]
    return ModelConfig(
        preset="tiny", n_layers=hf["num_hidden_layers"], d_model=width, n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads, ffn_hidden=hf["intermediate_size"],
        max_seq_len=context, rope_theta=theta, norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), qk_norm=False,
        init_std=hf.get("initializer_range", 0.02), attention=attention, family=family, rope_scaling=scaling,
        **biases,
    ).resolved(hf["vocab_size"])


def hf_config(cfg: ModelConfig, bos_id: int | None, eos_id: int | None, dtype_name: str) -> dict:
    """config.json of the model's family (ours export as Llama); refuses what the family cannot express."""
    family = cfg.family or "llama"
    if cfg.qk_norm:
        raise ValueError("model.qk_norm has no LlamaForCausalLM equivalent; export a model trained without it")
    if family == "llama" and cfg.qkv_bias != cfg.out_bias:
        raise ValueError("Llama's attention_bias puts biases on q, k, v and o alike; this model has them on "
                         f"{'q/k/v only' if cfg.qkv_bias else 'o only'}")
    if family == "qwen2" and (not cfg.qkv_bias or cfg.out_bias or cfg.mlp_bias):
        raise ValueError("Qwen2 has biases on q/k/v and nowhere else; this model's differ")
    if family == "mistral" and (cfg.qkv_bias or cfg.out_bias or cfg.mlp_bias):
        raise ValueError("Mistral has no biases; this model has some")
    if cfg.rope_scaling is not None and family != "llama":
        raise ValueError(f"{family} has no llama3 RoPE scaling")
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {})}
    out = {
        "architectures": [ARCHITECTURES[family]], "model_type": family,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_seq_len,
        # transformers < 5 reads rope_theta (+ rope_scaling), 5.x rope_parameters: both, so either loads the folder
        "rope_theta": cfg.rope_theta, "rope_parameters": rope, "rope_scaling": cfg.rope_scaling,
        "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu",
        "initializer_range": cfg.init_std, "torch_dtype": dtype_name, "dtype": dtype_name,
        "bos_token_id": bos_id, "eos_token_id": eos_id,
    }
    if family == "llama":
        out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    else:  # the window is off: attention sees the whole context, as ours does
        out.update(sliding_window=None)
    if family == "qwen2":
        out.update(use_sliding_window=False, max_window_layers=cfg.n_layers,
                   layer_types=["full_attention"] * cfg.n_layers)
    return out
