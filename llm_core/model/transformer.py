"""The Transformer, architecture only (no optimizer, parallelism, compile or I/O: those are applied from outside).

Design choices, Llama-2 style:
- pre-norm residual blocks with RMSNorm (statistics in fp32 whatever the activation dtype);
- rotary position embeddings in the "rotate half" layout used by Hugging Face Llama, so export needs no permutation;
- grouped-query attention: n_kv_heads <= n_heads (1 = multi-query), attention through one dispatch function;
- SwiGLU feed-forward; no biases anywhere; optional QK-norm;
- tied input/output embeddings by default;
- init: normal(model.init_std, 0.02 in every preset), residual output projections scaled by 1/sqrt(2 * n_layers)
  (GPT-2) so the residual stream's variance does not grow with depth;
- an optional KV cache for decoding: the model writes into it and attends over everything cached so far. A cache
  with per-row `lengths` is ragged: each row has its own position, writes at its own offset and attends only over
  its own filled part (batched decoding of sequences of different lengths, rows joining and leaving).

Shapes: B batch, T new tokens, S cached + new tokens, H query heads, K kv heads, D head dim, C d_model, V vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_core.config import PRESETS, ModelConfig
from llm_core.model.attention import attention


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 statistics: bf16 mean-of-squares loses too many bits on wide layers
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (max_len, head_dim) in fp32, duplicated over the two halves (rotate-half layout)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (L, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, D)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, D); cos/sin: (T, D)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).type_as(x)


@dataclass
class KVCache:
    """Keys and values of every layer for up to `max_len` positions; `pos` is how many are filled.

    With `lengths` (B,) set the cache is ragged: row b holds `lengths[b]` positions and `pos` is unused. Slicing rows
    (`cache.rows(a, b)`) gives a view that writes into the same storage.
    """

    k: torch.Tensor  # (L, B, K, max_len, D)
    v: torch.Tensor
    pos: int = 0
    lengths: torch.Tensor | None = None  # (B,) int64, ragged caches only

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, device, dtype, ragged: bool = False) -> "KVCache":
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        lengths = torch.zeros(batch, dtype=torch.long, device=device) if ragged else None
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype),
                   lengths=lengths)

    def rows(self, start: int, stop: int) -> "KVCache":
        """Rows start..stop-1 as a view: writes (and length updates) land in this cache."""
        assert self.lengths is not None, "row views are for ragged caches"
        return KVCache(self.k[:, start:stop], self.v[:, start:stop], lengths=self.lengths[start:stop])

    @property
    def max_len(self) -> int:
        return self.k.shape[3]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.backend = cfg.attention
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None and cache.lengths is not None:
            # ragged: row b writes its T new positions at lengths[b].. and sees keys up to its own end (the mask)
            rows = torch.arange(B, device=x.device)[:, None]  # (B, 1)
            cols = cache.lengths[:, None] + torch.arange(T, device=x.device)  # (B, T)
            cache.k[layer][rows, :, cols] = k.transpose(1, 2)  # (B, T, K, D) into (B, K, S, D)
            cache.v[layer][rows, :, cols] = v.transpose(1, 2)
            span = mask.shape[-1]
            k, v = cache.k[layer, :, :, :span], cache.v[layer, :, :, :span]  # (B, K, S, D)
        elif cache is not None:
            start = cache.pos
            cache.k[layer, :B, :, start:start + T] = k
            cache.v[layer, :B, :, start:start + T] = v
            k = cache.k[layer, :B, :, :start + T]  # (B, K, S, D)
            v = cache.v[layer, :B, :, :start + T]
        # causal with S > T is bottom-right aligned: new token i sees every cached one plus new ones up to i
        y = attention(q, k, v, causal=True, backend=self.backend, mask=mask)  # (B, H, T, D)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)  # gate
        self.w3 = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)  # up
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)  # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, x, cos, sin, cache=None, layer=0, mask=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer, mask)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.vocab_size > 0 and cfg.n_layers is not None, "pass a resolved ModelConfig"
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        # not persistent: derived from the config, so checkpoints hold weights only
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # a config.json written before init_std existed has none: those models were initialised with the preset's
        std = self.cfg.init_std if self.cfg.init_std is not None else PRESETS[self.cfg.preset]["init_std"]
        residual_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("attn.wo.weight", "ffn.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=residual_std)
            else:
                nn.init.normal_(p, mean=0.0, std=std)
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx: (B, T) token ids -> logits (B, T, V). With a cache, positions continue from cache.pos."""
        B, T = idx.shape
        if cache is not None and cache.lengths is not None:
            return self._forward_ragged(idx, cache)
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]  # (T, D)
        x = self.tok_emb(idx)  # (B, T, C)
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, cache, i)
        if cache is not None:
            cache.pos += T
        return self.lm_head(self.norm(x))  # (B, T, V)

    def _forward_ragged(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Every row continues from its own cache length: its own RoPE positions, its own visible keys."""
        B, T = idx.shape
        lengths = cache.lengths.tolist()
        if min(lengths) == max(lengths):
            # rows in step (one row, or prompts of one length): the plain path, no mask and no scattered writes
            logits = self.forward(idx, KVCache(cache.k, cache.v, pos=lengths[0]))
            cache.lengths += T
            return logits
        end = max(lengths) + T
        if end > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {end} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        pos = cache.lengths[:, None] + torch.arange(T, device=idx.device)  # (B, T)
        cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]  # (B, 1, T, D)
        # query t of row b sees keys 0..lengths[b]+t: its own past and its causal prefix, never another row's slack
        mask = (torch.arange(end, device=idx.device) <= pos[..., None])[:, None]  # (B, 1, T, S)
        x = self.tok_emb(idx)  # (B, T, C)
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, cache, i, mask)
        cache.lengths += T
        return self.lm_head(self.norm(x))  # (B, T, V)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once
