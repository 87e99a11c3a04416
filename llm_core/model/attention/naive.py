"""Reference attention: the plain softmax(QK^T)V in fp32, slow and obviously correct.

The fused kernels are tested against this, so it favours clarity over speed and memory.
"""

from __future__ import annotations

import math

import torch


def causal_mask(seq_q: int, seq_k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (seq_q, seq_k) mask, True where query i may attend key j.

    Bottom-right aligned like flash-attn: the last query sits at the last key, so with a KV cache
    (seq_k > seq_q) query i sees keys j <= i + seq_k - seq_q. When seq_q > seq_k the first
    seq_q - seq_k queries see no key at all.
    """
    return torch.ones(seq_q, seq_k, dtype=torch.bool, device=device).tril(diagonal=seq_k - seq_q)


def naive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale) v computed in fp32; returns q's dtype. An explicit boolean `mask` (True = attend,
    broadcastable to the scores) replaces the causal rule; every query row must keep at least one key.

    q: (batch, heads, seq_q, head_dim); k, v: (batch, kv_heads, seq_k, head_dim) with kv_heads
    dividing heads. Query rows that see no key (causal with seq_q > seq_k) return zeros.
    """
    num_heads, num_kv_heads = q.shape[1], k.shape[1]
    seq_q, seq_k = q.shape[2], k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    group = num_heads // num_kv_heads
    q32, k32, v32 = q.float(), k.float(), v.float()
    if group > 1:
        # GQA: query head h reads kv head h // group, the same pairing as the kernels.
        k32 = k32.repeat_interleave(group, dim=1)
        v32 = v32.repeat_interleave(group, dim=1)
    scores = torch.matmul(q32, k32.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if mask is not None:
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    elif causal:
        mask = causal_mask(seq_q, seq_k, device=q.device)
        has_key = mask.any(dim=-1, keepdim=True)  # (Tq, 1)
        # Rows with no visible key would softmax to NaN; let them see everything and zero them after,
        # which keeps both the output and its gradient finite.
        scores = scores.masked_fill(~(mask | ~has_key), float("-inf"))
        probs = torch.softmax(scores, dim=-1) * has_key
    else:
        probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v32)  # (B, H, Tq, D)
    return out.to(q.dtype)
