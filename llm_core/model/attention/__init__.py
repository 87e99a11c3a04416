"""The one place where the model's attention is computed.

`attention(q, k, v, causal=True, backend=...)` picks an implementation; everything else in the
code base calls this function and never an implementation directly:

- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (FlashAttention / cuDNN /
  math kernels, chosen by PyTorch). The default.
- ``"triton"``: our Flash-Attention-2 kernel in :mod:`llm_core.model.attention.flash`.
- ``"naive"``: the fp32 reference in :mod:`llm_core.model.attention.naive`.

Shapes: q is (batch, heads, seq_q, head_dim); k is (batch, kv_heads, seq_k, head_dim) and v
(batch, kv_heads, seq_k, v_dim) with kv_heads dividing heads (GQA; kv_heads == 1 is MQA). v_dim may
differ from head_dim (latent attention) for sdpa and naive; the Triton kernel needs them equal. The
output is (batch, heads, seq_q, v_dim) in q's dtype.

Causal masking is bottom-right aligned when seq_q != seq_k, as in flash-attn: query i attends
key j iff j <= i + seq_k - seq_q, so a decode step (seq_q == 1) sees the whole KV cache and a
chunked prefill sees the cache plus its own causal prefix. Query rows that see no key (only
possible when seq_q > seq_k) return zeros. All backends agree on this.

An explicit boolean `mask` (True = may attend, broadcastable to (batch, heads, seq_q, seq_k)) replaces the causal
rule: ragged batched decoding uses it, each row seeing only its own cached keys. The Triton kernel has no such
input, so masked calls go through SDPA whatever the backend.

One query position on the CPU (a decode step) over many (row, head) pairs takes two batched matmuls instead of SDPA:
SDPA's CPU kernel pays a fixed cost for every pair, which at batched decoding sizes is most of a step's attention time
(below `SINGLE_QUERY_PAIRS` pairs its own fixed cost is the smaller one).

Only torch is imported here; triton is imported on first use of the triton backend, so this
module loads on machines without triton.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .naive import causal_mask, naive_attention

BACKENDS = ("sdpa", "triton", "naive")
# (batch x heads) pairs from which one query position on the CPU is cheaper as two bmm than through SDPA (measured on
# the tiny preset, one thread: SDPA wins at 32 pairs, they tie at 64, bmm is ~20% faster at 128)
SINGLE_QUERY_PAIRS = 64

__all__ = ["BACKENDS", "attention", "causal_mask", "naive_attention"]


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "attention expects 4-D tensors q (batch, heads, seq_q, head_dim) and k, v "
            f"(batch, kv_heads, seq_k, head_dim); got q{tuple(q.shape)}, k{tuple(k.shape)}, v{tuple(v.shape)}"
        )
    if k.shape[:3] != v.shape[:3]:
        raise ValueError("attention: k and v must agree on batch, kv_heads and seq_k; "
                         f"got k{tuple(k.shape)}, v{tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(
            "attention: q and k must agree on batch and head_dim; "
            f"got q{tuple(q.shape)}, k{tuple(k.shape)}"
        )
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(
            f"attention: kv_heads ({k.shape[1]}) must divide heads ({q.shape[1]}) for grouped-query attention"
        )


def _by_bmm(q: torch.Tensor) -> bool:
    return q.shape[2] == 1 and q.device.type == "cpu" and q.shape[0] * q.shape[1] >= SINGLE_QUERY_PAIRS


def _single_query(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
                  mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T * scale) v for seq_q == 1 as two `bmm`s over (batch x kv heads): the `group` query heads that
    share a kv head are that head's rows, so no key or value is repeated. Scores and softmax in fp32."""
    B, H, _, D = q.shape
    K, S, Dv = k.shape[1], k.shape[2], v.shape[3]
    group = H // K
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    # a cache slice (B, K, S, D) merges its first two dims without a copy
    scores = torch.bmm(q.reshape(B * K, group, D), k.reshape(B * K, S, D).transpose(1, 2))  # (B K, group, S)
    scores = scores.float().mul_(scale)
    if mask is not None:  # broadcastable to (B, H, 1, S); as (B or 1, K, group, S)
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
        if mask.shape[1] != 1:
            mask = mask.expand(-1, H, 1, S).reshape(mask.shape[0], K, group, S)
        scores = scores.view(B, K, group, S).masked_fill_(~mask, float("-inf"))
    probs = scores.view(B * K, group, S).softmax(-1).to(v.dtype)
    return torch.bmm(probs, v.reshape(B * K, S, Dv)).view(B, H, 1, Dv)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None) -> torch.Tensor:
    seq_q, seq_k = q.shape[2], k.shape[2]
    if _by_bmm(q):
        return _single_query(q, k, v, scale, None)
    gqa = q.shape[1] != k.shape[1]
    if not causal or seq_q == 1:
        # A single query row is the last one, so bottom-right causal lets it see every key.
        return F.scaled_dot_product_attention(q, k, v, is_causal=False, scale=scale, enable_gqa=gqa)
    if seq_q == seq_k:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    # SDPA's is_causal is top-left aligned, so the offset diagonal needs an explicit mask.
    mask = causal_mask(seq_q, seq_k, device=q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    if seq_q > seq_k:
        # Rows with no visible key: the math kernel gives zeros, the fused ones may give NaN.
        out = out.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return out


def _triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None) -> torch.Tensor:
    try:
        from .flash import flash_attention
    except ImportError as exc:
        raise ImportError(
            "attention backend 'triton' needs the triton package (pip install triton, Linux only); "
            f"use backend='sdpa' instead ({exc})"
        ) from exc
    if k.shape[-1] != v.shape[-1]:
        raise ValueError(f"attention backend 'triton' needs equal key and value head widths (got {k.shape[-1]} and "
                         f"{v.shape[-1]}); for latent attention set model.qk_nope_head_dim + model.qk_rope_head_dim "
                         "== model.v_head_dim, or use backend='sdpa'")
    return flash_attention(q, k, v, causal=causal, scale=scale)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    backend: str = "sdpa",
    scale: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention with GQA and bottom-right causal masking (or an explicit boolean mask).

    q: (batch, heads, seq_q, head_dim); k, v: (batch, kv_heads, seq_k, head_dim).
    Returns (batch, heads, seq_q, head_dim). ``scale`` defaults to 1/sqrt(head_dim).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; allowed values: {', '.join(BACKENDS)}")
    _check_shapes(q, k, v)
    if mask is not None:
        if backend == "naive":
            return naive_attention(q, k, v, causal=False, scale=scale, mask=mask)
        if _by_bmm(q):
            return _single_query(q, k, v, scale, mask)
        # every masked row keeps at least its own key, so no row is fully masked (no NaN from the fused kernels)
        gqa = q.shape[1] != k.shape[1]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    if backend == "sdpa":
        return _sdpa(q, k, v, causal, scale)
    if backend == "triton":
        return _triton(q, k, v, causal, scale)
    return naive_attention(q, k, v, causal=causal, scale=scale)
