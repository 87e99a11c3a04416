"""Hugging Face DeepSeek-V3 export of models with latent attention and/or mixture-of-experts blocks.

`DeepseekV3ForCausalLM` has MLA in every block, then `first_k_dense_replace` dense SwiGLU blocks followed by MoE
blocks, all alike, with a sigmoid router whose bias (`e_score_correction_bias`) steers the top-k choice only: our
model's layout, so the mapping is a renaming (rotate-half RoPE, `rope_interleave: false`; one router group; gate
weights renormalised, scaling factor 1). Models outside that family (GQA blocks, softmax routers, MoE blocks before
dense ones, blocks that differ in shape) have no equivalent and are refused with the option to change.
Experts are written one tensor per expert (`mlp.experts.<e>.gate_proj.weight`, ...), the layout of DeepSeek's own
checkpoints, which transformers fuses on load.
"""

from __future__ import annotations

import torch

from llm_core.config import ModelConfig

MLA_KEYS = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
MOE_KEYS = ("n_experts", "top_k", "n_shared_experts", "expert_hidden", "score_func")
_ATTN = {
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wq_a.weight": "self_attn.q_a_proj.weight",
    "attn.q_norm.weight": "self_attn.q_a_layernorm.weight",
    "attn.wq_b.weight": "self_attn.q_b_proj.weight",
    "attn.wkv_a.weight": "self_attn.kv_a_proj_with_mqa.weight",
    "attn.kv_norm.weight": "self_attn.kv_a_layernorm.weight",
    "attn.wkv_b.weight": "self_attn.kv_b_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
    "ffn.router.weight": "mlp.gate.weight",
    "ffn.router.expert_bias": "mlp.gate.e_score_correction_bias",
    "ffn.shared.w1.weight": "mlp.shared_experts.gate_proj.weight",
    "ffn.shared.w3.weight": "mlp.shared_experts.up_proj.weight",
    "ffn.shared.w2.weight": "mlp.shared_experts.down_proj.weight",
}
_EXPERTS = {"ffn.w1": "gate_proj", "ffn.w3": "up_proj", "ffn.w2": "down_proj"}


def is_deepseek(cfg: ModelConfig) -> bool:
    """Whether the model needs the DeepSeek-V3 format (any MLA or MoE block) rather than Llama's."""
    return any(cfg.layer(i).attention_type == "mla" or cfg.layer(i).ffn == "moe" for i in range(cfg.n_layers))


def _key(cfg: ModelConfig, i: int, name: str) -> str:
    overridden = cfg.layers and getattr(cfg.layers[i], name, None) is not None
    return f"model.layers[{i}].{name}" if overridden else f"model.{name}"


def check_exportable(cfg: ModelConfig) -> None:
    """Raise ValueError naming the option when the model has no DeepseekV3ForCausalLM equivalent."""
    views = [cfg.layer(i) for i in range(cfg.n_layers)]
    for i, v in enumerate(views):
        if v.attention_type != "mla":
            raise ValueError(f"{_key(cfg, i, 'attention_type')}=gqa (block {i}) has no DeepSeek-V3 equivalent: its "
                             "blocks all use mla attention (a model of gqa blocks with dense feed-forwards exports "
                             "to Llama); set model.attention_type: mla")
        for name in MLA_KEYS:
            if getattr(v, name) != getattr(views[0], name):
                raise ValueError(f"{_key(cfg, i, name)} differs from block 0's: DeepSeek-V3's blocks share one "
                                 "attention shape")
    first_moe = next((i for i, v in enumerate(views) if v.ffn == "moe"), len(views))
    for i, v in enumerate(views):
        if i > first_moe and v.ffn == "dense":
            raise ValueError(f"{_key(cfg, i, 'ffn')}=dense after a moe block has no DeepSeek-V3 equivalent: its "
                             "dense blocks come first (model.first_dense_layers)")
        keys = ("ffn_hidden",) if v.ffn == "dense" else MOE_KEYS
        ref = views[0] if v.ffn == "dense" else views[first_moe]
        for name in keys:
            if getattr(v, name) != getattr(ref, name):
                raise ValueError(f"{_key(cfg, i, name)} differs from the other {v.ffn} blocks': DeepSeek-V3's "
                                 f"{v.ffn} blocks are all alike")
        if v.ffn == "moe" and v.score_func != "sigmoid":
            raise ValueError(f"{_key(cfg, i, 'score_func')}=softmax has no DeepSeek-V3 equivalent: its router "
                             "scores are sigmoids; set model.score_func: sigmoid")


def deepseek_config(cfg: ModelConfig, bos_id, eos_id, dtype_name: str) -> dict:
    check_exportable(cfg)
    views = [cfg.layer(i) for i in range(cfg.n_layers)]
    first_moe = next((i for i, v in enumerate(views) if v.ffn == "moe"), cfg.n_layers)
    moe = views[first_moe] if first_moe < cfg.n_layers else cfg
    mla = views[0]
    return {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": views[0].ffn_hidden if first_moe > 0 else cfg.ffn_hidden,
        "moe_intermediate_size": moe.expert_hidden, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_heads,
        "n_shared_experts": moe.n_shared_experts, "n_routed_experts": moe.n_experts,
        "num_experts_per_tok": moe.top_k, "first_k_dense_replace": first_moe,
        # one routing group (no node-limited routing), renormalised gates, no extra scaling: our router exactly
        "n_group": 1, "topk_group": 1, "norm_topk_prob": True, "routed_scaling_factor": 1.0,
        "kv_lora_rank": mla.kv_lora_rank, "q_lora_rank": mla.q_lora_rank or None,
        "qk_rope_head_dim": mla.qk_rope_head_dim, "qk_nope_head_dim": mla.qk_nope_head_dim,
        "v_head_dim": mla.v_head_dim, "head_dim": mla.qk_rope_head_dim,
        "max_position_embeddings": cfg.max_seq_len, "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta}, "rope_interleave": False,
        "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu",
        "attention_bias": False, "attention_dropout": 0.0, "initializer_range": cfg.init_std,
        "num_nextn_predict_layers": 0, "torch_dtype": dtype_name, "dtype": dtype_name,
        "bos_token_id": bos_id, "eos_token_id": eos_id,
    }


def deepseek_state_dict(model) -> dict[str, torch.Tensor]:
    out = {"model.embed_tokens.weight": model.tok_emb.weight, "model.norm.weight": model.norm.weight}
    if not model.cfg.tie_embeddings:
        out["lm_head.weight"] = model.lm_head.weight
    for i, block in enumerate(model.layers):
        for name, tensor in block.state_dict().items():
            if name in _EXPERTS:  # (E, out, in) -> one matrix per expert
                for e, matrix in enumerate(tensor):
                    out[f"model.layers.{i}.mlp.experts.{e}.{_EXPERTS[name]}.weight"] = matrix
            else:
                out[f"model.layers.{i}.{_ATTN[name]}"] = tensor
    return {k: v.detach().contiguous().clone() for k, v in out.items()}
