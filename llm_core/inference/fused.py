"""The one-token decode step of the batched engine, on fused weights and without module calls.

At decoding sizes a step is nothing but overhead: on the CPU the tiny preset's forward pass for one token is ~30 small
ops per layer, each costing more in dispatch than in arithmetic, and every `nn.Module` call adds ~15 us of Python on
top. This step computes exactly what `Transformer.forward` computes for one new token per row of a ragged KV cache
(same ops in the same order where it matters for rounding: it is bit-identical in fp32, which the engine's tests
check against the model's own path) with far fewer ops:

- q, k and v come from one matmul over the concatenated projections, the SwiGLU gate and up from another
  (a matmul over stacked weights gives the very same dot products), each a bare `mm` on a transposed view made
  once (what `F.linear` runs, less its wrappers);
- in fp32 the dtype round trips of the norms and RoPE (fp32 statistics for bf16 activations) are left out: they
  are identities there;
- RoPE rotates q and k together, as x * cos + swap(x) * sin' with sin' = sin with its first half negated
  (swapping the halves of a head is the rotate-half layout, the negation moves onto the table);
- the RoPE rows, the attention mask (only when rows have different lengths) and the cache slots the new keys and
  values go to are built once per step and shared by every layer; the lengths the step needs on the host come from
  the caller, so the step never waits on the device;
- attention goes through the model's one dispatch point (`llm_core.model.attention`), as the model's own does.

Blocks this step does not cover (latent attention, mixture of experts) keep the model's own forward pass:
`FusedDecoder.supports(model)` says which. The fused weights are copies (the attention and feed-forward matrices once
more in memory; weights changed after the engine is built are not seen by it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llm_core.model.attention import attention
from llm_core.model.layers import FeedForward
from llm_core.model.transformer import Attention, KVCache, Transformer


class _Layer:
    """One block's weights, fused, and its shape."""

    def __init__(self, block) -> None:
        attn, ffn = block.attn, block.ffn
        self.heads, self.kv_heads, self.head_dim = attn.n_heads, attn.n_kv_heads, attn.head_dim
        self.rope_dim = block.rope_dim
        self.eps_attn, self.eps_ffn = block.attn_norm.eps, block.ffn_norm.eps
        self.attn_norm, self.ffn_norm = block.attn_norm.weight.detach(), block.ffn_norm.weight.detach()
        self.q_norm = (attn.q_norm.weight.detach(), attn.q_norm.eps) if attn.q_norm is not None else None
        self.k_norm = (attn.k_norm.weight.detach(), attn.k_norm.eps) if attn.k_norm is not None else None
        # transposed views (C, out): x @ w is F.linear(x, weight) without its wrappers
        self.wqkv = torch.cat([attn.wq.weight, attn.wk.weight, attn.wv.weight]).detach().t()  # (C, (H + 2K) D)
        self.wo = attn.wo.weight.detach().t()
        self.w13 = torch.cat([ffn.w1.weight, ffn.w3.weight]).detach().t()  # (C, 2F): gate, then up
        self.w2 = ffn.w2.weight.detach().t()
        self.hidden = ffn.w1.weight.shape[0]
        self.backend = attn.backend


def _norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # RMSNorm.forward; in fp32 F.rms_norm's own CPU composite (x * rsqrt(mean(x^2) + eps)) spelled out, which skips
    # its dispatch layers and a copy: the same values
    if x.dtype == torch.float32:
        return x * (x * x).mean(-1, keepdim=True).add_(eps).rsqrt_() * weight
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).type_as(x) * weight


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # layers.apply_rope with the rotation as a swap of the two halves (one flip; sin's first half negated)
    rolled = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)
    if x.dtype == torch.float32:
        return x * cos + rolled * sin
    return (x.float() * cos + rolled.float() * sin).type_as(x)


class FusedDecoder:
    """`decoder(tokens, cache, lengths)`: next-token logits (n, V) of rows 0..n-1 of a ragged cache, each row's newest
    token `tokens[b]` written at position `lengths[b]` (host ints, the same as `cache.lengths[:n]`); into `out` when
    given (fp32 models). Run it under `torch.inference_mode()` (the engine's step is)."""

    def __init__(self, model: Transformer) -> None:
        assert self.supports(model), "FusedDecoder covers grouped-query attention + SwiGLU blocks only"
        self.cfg = model.cfg
        self.layers = [_Layer(block) for block in model.layers]
        self.emb = model.tok_emb.weight.detach()
        self.norm, self.norm_eps = model.norm.weight.detach(), model.norm.eps
        self.head = model.lm_head.weight.detach().t()  # (C, V)
        self.rope = {}
        for dim in model.rope_dims:
            cos, sin = getattr(model, f"rope_cos_{dim}"), getattr(model, f"rope_sin_{dim}")
            sign = torch.ones(dim, dtype=sin.dtype, device=sin.device)
            sign[:dim // 2] = -1.0
            self.rope[dim] = (cos, sin * sign)  # (L, dim) each

    @staticmethod
    def supports(model: Transformer) -> bool:
        return all(isinstance(b.attn, Attention) and isinstance(b.ffn, FeedForward) for b in model.layers)

    def __call__(self, tokens: torch.Tensor, cache: KVCache, lengths: list[int],
                 out: torch.Tensor | None = None) -> torch.Tensor:
        n = tokens.shape[0]
        pos = cache.lengths[:n]  # (n,) on the device: where each row writes
        if max(lengths) + 1 > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {max(lengths) + 1} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        span = max(lengths) + 1
        # rows at one length write one column of the cache and attend over everything cached (the model's plain
        # path); ragged rows write at their own slots and need the mask
        step = lengths[0] if min(lengths) == max(lengths) else None
        mask = None
        if step is None:
            mask = (torch.arange(span, device=tokens.device) <= pos[:, None])[:, None, None]  # (n, 1, 1, S)
        rope = {dim: (cos[pos][:, None], sin[pos][:, None]) for dim, (cos, sin) in self.rope.items()}  # (n, 1, dim)
        slots = {}  # kv heads -> (n K,) rows of the cache viewed as (B K S, D): where row b's new key of head h goes
        x = F.embedding(tokens, self.emb)  # (n, C)
        for i, L in enumerate(self.layers):
            H, K, D = L.heads, L.kv_heads, L.head_dim
            qkv = _norm(x, L.attn_norm, L.eps_attn) @ L.wqkv  # (n, (H + 2K) D)
            qk = qkv[:, :(H + K) * D].view(n, H + K, D)
            if L.q_norm is not None:
                qk = torch.cat([_norm(qk[:, :H], *L.q_norm), _norm(qk[:, H:], *L.k_norm)], 1)
            cos, sin = rope[L.rope_dim]
            qk = _rope(qk, cos, sin)  # (n, H + K, D)
            c_k, c_v = cache.layers[i]  # (B, K, S, D) each
            k, v = qk[:, H:], qkv[:, (H + K) * D:].view(n, K, D)  # (n, K, D) each
            if step is not None:
                c_k[:n, :, step] = k
                c_v[:n, :, step] = v
            else:
                if K not in slots:
                    heads = torch.arange(K, device=pos.device) * c_k.shape[2]
                    slots[K] = (torch.arange(n, device=pos.device)[:, None] * (K * c_k.shape[2]) + heads
                                + pos[:, None]).flatten()
                c_k.view(-1, D).index_copy_(0, slots[K], k.reshape(n * K, D))
                c_v.view(-1, D).index_copy_(0, slots[K], v.reshape(n * K, D))
            y = attention(qk[:, :H, None], c_k[:n, :, :span], c_v[:n, :, :span], causal=True, backend=L.backend,
                          mask=mask)  # (n, H, 1, D)
            x = x + y.reshape(n, H * D) @ L.wo
            gate, up = (_norm(x, L.ffn_norm, L.eps_ffn) @ L.w13).split(L.hidden, -1)  # (n, F) each
            x = x + (F.silu(gate) * up) @ L.w2
        cache.lengths[:n] += 1
        return torch.mm(_norm(x, self.norm, self.norm_eps), self.head, out=out)  # (n, V)
