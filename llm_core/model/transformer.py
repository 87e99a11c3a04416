"""The Transformer, architecture only (no optimizer, parallelism, compile or I/O: those are applied from outside).

Design choices, Llama-2 style by default:
- pre-norm residual blocks with RMSNorm (statistics in fp32 whatever the activation dtype);
- rotary position embeddings in the "rotate half" layout used by Hugging Face Llama, so export needs no permutation;
- attention per block: grouped-query (n_kv_heads <= n_heads, 1 = multi-query) or multi-head latent attention
  (`mla.py`), all through one dispatch function;
- feed-forward per block: SwiGLU or a mixture of experts (`moe.py`); blocks may differ (`ModelConfig.layer(i)`);
- no biases by default (imported checkpoints may have them: q/k/v, attention output, SwiGLU); optional QK-norm;
  optional dropout on each block's attention and feed-forward outputs;
- tied input/output embeddings by default;
- init: normal(model.init_std, 0.02 in every preset), residual output projections scaled by 1/sqrt(2 * n_layers)
  (GPT-2) so the residual stream's variance does not grow with depth;
- buffers (RoPE tables, routing biases) stay fp32 when the weights are cast to bf16 for inference;
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
from llm_core.model.attention import attention, causal_mask
from llm_core.model.layers import FeedForward, RMSNorm, apply_rope, rope_tables
from llm_core.model.mla import MLA
from llm_core.model.moe import MoE

__all__ = ["Attention", "Block", "FeedForward", "KVCache", "RMSNorm", "Transformer", "apply_rope", "rope_tables"]


@dataclass
class KVCache:
    """What decoding keeps of every layer for up to `max_len` positions; `pos` is how many are filled.

    Per layer a pair: grouped-query attention keeps keys and values, (B, K, max_len, D) each; latent attention keeps
    the normalised key/value latent (B, max_len, kv_lora_rank) and the rotated shared key (B, max_len, rope dim).
    """

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    max_len: int
    pos: int = 0
    lengths: torch.Tensor | None = None  # (B,) int64, ragged caches only: row b holds lengths[b] positions

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, device, dtype, ragged: bool = False) -> "KVCache":
        layers = []
        for i in range(cfg.n_layers):
            c = cfg.layer(i)
            if c.attention_type == "mla":
                shapes = (batch, max_len, c.kv_lora_rank), (batch, max_len, c.qk_rope_head_dim)
            else:
                shapes = ((batch, c.n_kv_heads, max_len, c.head_dim),) * 2
            layers.append(tuple(torch.zeros(s, device=device, dtype=dtype) for s in shapes))
        lengths = torch.zeros(batch, dtype=torch.long, device=device) if ragged else None
        return cls(layers, max_len, lengths=lengths)

    def rows(self, start: int, stop: int) -> "KVCache":
        """Rows start..stop-1 of a ragged cache as a view: writes (and length updates) land in this cache."""
        assert self.lengths is not None, "row views are for ragged caches"
        return KVCache([(a[start:stop], b[start:stop]) for a, b in self.layers], self.max_len,
                       lengths=self.lengths[start:stop])

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of row src into row dst (the batched decoder compacts its rows)."""
        for pair in self.layers:
            for t in pair:  # GQA (B, K, S, D): positions on dim 2; latent (B, S, R): on dim 1
                seq = 2 if t.dim() == 4 else 1
                t[dst].narrow(seq - 1, 0, length).copy_(t[src].narrow(seq - 1, 0, length))

    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self.layers for t in pair)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.backend = cfg.attention
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=cfg.out_bias)
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
            c_k, c_v = cache.layers[layer]
            c_k[rows, :, cols] = k.transpose(1, 2)  # (B, T, K, D) into (B, K, S, D)
            c_v[rows, :, cols] = v.transpose(1, 2)
            span = mask.shape[-1]
            k, v = c_k[:, :, :span], c_v[:, :, :span]  # (B, K, S, D)
        elif cache is not None:
            start = cache.pos
            c_k, c_v = cache.layers[layer]
            c_k[:B, :, start:start + T] = k
            c_v[:B, :, start:start + T] = v
            k = c_k[:B, :, :start + T]  # (B, K, S, D)
            v = c_v[:B, :, :start + T]
        # causal with S > T is bottom-right aligned: new token i sees every cached one plus new ones up to i
        y = attention(q, k, v, causal=True, backend=self.backend, mask=mask)  # (B, H, T, D)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        """`cfg` is this block's view (`ModelConfig.layer(i)`)."""
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = MLA(cfg) if cfg.attention_type == "mla" else Attention(cfg)
        self.rope_dim = cfg.rope_dim
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = MoE(cfg) if cfg.ffn == "moe" else FeedForward(cfg.d_model, cfg.ffn_hidden, cfg.mlp_bias)
        # no module at all without dropout: nothing draws random numbers, so runs stay as they were
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x, rope: dict, cache=None, layer=0, mask=None):
        cos, sin = rope[self.rope_dim]
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, cache, layer, mask))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.vocab_size > 0 and cfg.n_layers is not None, "pass a resolved ModelConfig"
        self.cfg = cfg
        # forward reads plain attributes, never the config: torch.compile then traces it as one graph whatever
        # hooks a config object carries (params tracing wraps its attribute reads)
        self.max_seq_len = cfg.max_seq_len
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg.layer(i)) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        # one table per rotary width in use (GQA heads rotate head_dim, MLA its rope part);
        # not persistent: derived from the config, so checkpoints hold weights only
        self.rope_dims = sorted({block.rope_dim for block in self.layers})
        for dim in self.rope_dims:
            cos, sin = rope_tables(dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling)
            self.register_buffer(f"rope_cos_{dim}", cos, persistent=False)
            self.register_buffer(f"rope_sin_{dim}", sin, persistent=False)
        self.reset_parameters()

    def _apply(self, fn, recurse=True):
        # buffers stay fp32 whatever dtype the weights are cast to (bf16 inference): bf16 RoPE tables are off by up
        # to 4e-3 (8 bits of mantissa), and the routers' balancing biases steer top-k choices by small margins
        kept = {name: buf for name, buf in self.named_buffers() if buf.dtype == torch.float32}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            owner, _, leaf = name.rpartition(".")
            module = self.get_submodule(owner)
            new = module._buffers[leaf]
            if new is not None and new.dtype != torch.float32 and new.is_floating_point():
                module._buffers[leaf] = old.to(new.device)
        return self

    def reset_parameters(self) -> None:
        # a config.json written before init_std existed has none: those models were initialised with the preset's
        std = self.cfg.init_std if self.cfg.init_std is not None else PRESETS[self.cfg.preset]["init_std"]
        residual_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            elif name.endswith(("attn.wo.weight", "ffn.w2.weight", "ffn.w2", "ffn.shared.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=residual_std)
            else:
                nn.init.normal_(p, mean=0.0, std=std)
        for name, buf in self.named_buffers():
            if name.endswith("expert_bias"):
                buf.zero_()
        for dim in self.rope_dims:
            cos, sin = rope_tables(dim, self.cfg.max_seq_len, self.cfg.rope_theta, self.cfg.rope_scaling)
            getattr(self, f"rope_cos_{dim}").copy_(cos)
            getattr(self, f"rope_sin_{dim}").copy_(sin)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None,
                docs: torch.Tensor | None = None) -> torch.Tensor:
        """idx: (B, T) token ids -> logits (B, T, V). With a cache, positions continue from cache.pos.

        docs: (B, T) document index of each position of packed rows (no cache): a token attends only to earlier
        tokens of its own document, so every document is read as if it stood alone. RoPE scores depend on relative
        positions only, so a document need not restart at position 0."""
        B, T = idx.shape
        mask = None
        if docs is not None:
            if cache is not None:
                raise ValueError("docs (a document mask for packed rows) works without a KV cache only")
            same = docs[:, :, None] == docs[:, None, :]  # (B, T, T)
            mask = (same & causal_mask(T, T, device=idx.device))[:, None]  # (B, 1, T, T)
        if cache is not None and cache.lengths is not None:
            return self._forward_ragged(idx, cache)
        start = cache.pos if cache is not None else 0
        if start + T > self.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds model.max_seq_len={self.max_seq_len}")
        rope = {dim: (getattr(self, f"rope_cos_{dim}")[start:start + T],
                      getattr(self, f"rope_sin_{dim}")[start:start + T])
                for dim in self.rope_dims}  # width -> (T, width) each
        x = self.tok_emb(idx)  # (B, T, C)
        for i, block in enumerate(self.layers):
            x = block(x, rope, cache, i, mask)
        if cache is not None:
            cache.pos += T
        return self.lm_head(self.norm(x))  # (B, T, V)

    def _forward_ragged(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Every row continues from its own cache length: its own RoPE positions, its own visible keys."""
        B, T = idx.shape
        lengths = cache.lengths.tolist()
        if min(lengths) == max(lengths):
            # rows in step (one row, or prompts of one length): the plain path, no mask and no scattered writes
            logits = self.forward(idx, KVCache(cache.layers, cache.max_len, pos=lengths[0]))
            cache.lengths += T
            return logits
        end = max(lengths) + T
        if end > self.max_seq_len:
            raise ValueError(f"sequence of {end} tokens exceeds model.max_seq_len={self.max_seq_len}")
        pos = cache.lengths[:, None] + torch.arange(T, device=idx.device)  # (B, T)
        rope = {dim: (getattr(self, f"rope_cos_{dim}")[pos][:, None], getattr(self, f"rope_sin_{dim}")[pos][:, None])
                for dim in self.rope_dims}  # width -> (B, 1, T, width) each
        # query t of row b sees keys 0..lengths[b]+t: its own past and its causal prefix, never another row's slack
        mask = (torch.arange(end, device=idx.device) <= pos[..., None])[:, None]  # (B, 1, T, S)
        x = self.tok_emb(idx)  # (B, T, C)
        for i, block in enumerate(self.layers):
            x = block(x, rope, cache, i, mask)
        cache.lengths += T
        return self.lm_head(self.norm(x))  # (B, T, V)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once

    # ---------------------------------------------------------------------------------------------------------------
    # hooks of the mixture-of-experts layers for the training loop

    def moe_layers(self) -> list[tuple[int, MoE]]:
        return [(i, block.ffn) for i, block in enumerate(self.layers) if isinstance(block.ffn, MoE)]

    def take_expert_load(self) -> torch.Tensor | None:
        """Tokens per expert routed since the last call, (MoE layers, experts), or None without MoE layers.
        Assumes every MoE layer has the same number of experts (else the rows are zero-padded)."""
        layers = self.moe_layers()
        if not layers:
            return None
        loads = [moe.take_load() for _, moe in layers]
        width = max(t.numel() for t in loads)
        return torch.stack([F.pad(t.float(), (0, width - t.numel())) for t in loads])

    def update_expert_bias(self, load: torch.Tensor) -> None:
        """Auxiliary-loss-free balancing step from `take_expert_load`'s counts summed over ranks."""
        for row, (_, moe) in zip(load, self.moe_layers()):
            moe.update_bias(row[:moe.n_experts])

    def take_aux_loss(self) -> torch.Tensor | None:
        """The weighted sequence-level balance losses of the last forward pass, summed (None when off)."""
        losses = [moe.aux_loss for _, moe in self.moe_layers() if moe.aux_loss is not None]
        for _, moe in self.moe_layers():
            moe.aux_loss = None
        return torch.stack(losses).sum() if losses else None
