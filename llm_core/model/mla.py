"""Multi-head latent attention (DeepSeek-V2 / V3).

Keys and values are not projected per head from the residual stream; they are decoded from one small latent per
token, `kv_lora_rank` wide, which is what the decoding cache stores. Rotary position cannot pass through that
low-rank decoding (it would no longer commute with the up-projection), so each head's query/key is split into a
position-free part (`qk_nope_head_dim`, from the latent) and a rotary part (`qk_rope_head_dim`), the latter with one
key shared by all heads and cached beside the latent. A decoding step therefore caches kv_lora_rank + qk_rope_head_dim
numbers per token and layer, against 2 * n_kv_heads * head_dim for grouped-query attention.

Layouts follow Hugging Face's DeepseekV3Attention so export is a renaming: a query head is [nope | rope], a decoded
key/value head [k_nope | v], the latent projection [latent | shared rope key]; RoPE is rotate-half on the rope part.
The latent norms use eps 1e-6, DeepSeek's value, whatever model.norm_eps says.
Decoding expands the cached latent to full keys and values at every step (no weight absorption): simple and exact,
the cache is small, the compute per step is that of ordinary attention.

Shapes: B batch, T new tokens, S cached + new, H heads, R kv latent, Q q latent, Dn nope, Dr rope, Dv value width.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from llm_core.config import ModelConfig
from llm_core.model.attention import attention
from llm_core.model.layers import RMSNorm, apply_rope

LATENT_NORM_EPS = 1e-6


class MLA(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.backend = cfg.n_heads, cfg.attention
        self.nope, self.rope, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.rank = cfg.kv_lora_rank
        qk = self.nope + self.rope
        if cfg.q_lora_rank:
            self.wq_a = nn.Linear(cfg.d_model, cfg.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(cfg.q_lora_rank, LATENT_NORM_EPS)
            self.wq_b = nn.Linear(cfg.q_lora_rank, cfg.n_heads * qk, bias=False)
        else:
            self.wq = nn.Linear(cfg.d_model, cfg.n_heads * qk, bias=False)
        self.wkv_a = nn.Linear(cfg.d_model, self.rank + self.rope, bias=False)
        self.kv_norm = RMSNorm(self.rank, LATENT_NORM_EPS)
        self.wkv_b = nn.Linear(self.rank, cfg.n_heads * (self.nope + self.v_dim), bias=False)
        self.wo = nn.Linear(cfg.n_heads * self.v_dim, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, cache=None, layer: int = 0, mask: torch.Tensor | None = None):
        B, T, _ = x.shape
        H = self.n_heads
        q = self.wq_b(self.q_norm(self.wq_a(x))) if hasattr(self, "wq_a") else self.wq(x)
        q = q.view(B, T, H, self.nope + self.rope).transpose(1, 2)  # (B, H, T, Dn + Dr)
        q_nope, q_rope = q.split([self.nope, self.rope], dim=-1)
        latent, k_rope = self.wkv_a(x).split([self.rank, self.rope], dim=-1)  # (B, T, R), (B, T, Dr)
        latent = self.kv_norm(latent)
        k_rope = apply_rope(k_rope.unsqueeze(1), cos, sin)  # (B, 1, T, Dr): one rotary key for all heads
        q_rope = apply_rope(q_rope, cos, sin)
        if cache is not None and cache.lengths is not None:
            # ragged (batched decoding): row b writes at lengths[b].. and sees its own filled part (the mask)
            rows = torch.arange(B, device=x.device)[:, None]  # (B, 1)
            cols = cache.lengths[:, None] + torch.arange(T, device=x.device)  # (B, T)
            c_latent, c_rope = cache.layers[layer]
            c_latent[rows, cols] = latent
            c_rope[rows, cols] = k_rope[:, 0]
            span = mask.shape[-1]
            latent, k_rope = c_latent[:, :span], c_rope[:, :span].unsqueeze(1)
        elif cache is not None:
            start = cache.pos
            c_latent, c_rope = cache.layers[layer]  # (B, max_len, R), (B, max_len, Dr)
            c_latent[:B, start:start + T] = latent
            c_rope[:B, start:start + T] = k_rope[:, 0]
            latent = c_latent[:B, :start + T]  # (B, S, R)
            k_rope = c_rope[:B, :start + T].unsqueeze(1)  # (B, 1, S, Dr)
        S = latent.shape[1]
        kv = self.wkv_b(latent).view(B, S, H, self.nope + self.v_dim).transpose(1, 2)  # (B, H, S, Dn + Dv)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        k = torch.cat([k_nope, k_rope.expand(B, H, S, self.rope)], dim=-1)  # (B, H, S, Dn + Dr)
        q = torch.cat([q_nope, q_rope], dim=-1)  # (B, H, T, Dn + Dr)
        # scale 1/sqrt(Dn + Dr), the query width, as DeepSeek (the dispatch's default)
        y = attention(q, k, v, causal=True, backend=self.backend, mask=mask)  # (B, H, T, Dv)
        return self.wo(y.transpose(1, 2).reshape(B, T, H * self.v_dim))
