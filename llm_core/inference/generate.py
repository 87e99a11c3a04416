"""KV-cache decoding and sampling: temperature, top-k, top-p, repetition penalty, stop tokens.

The prompt is run once (prefill) to fill the cache; each new token then costs one single-position forward pass
over the cached keys/values instead of a pass over the whole sequence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llm_core.model.transformer import KVCache, Transformer


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty (as in Hugging Face): seen tokens' positive logits are divided, negative ones multiplied."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    picked = logits.gather(-1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(-1, seen, picked)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) everything outside the top-k and outside the smallest set whose probability reaches top_p."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already reach top_p (the best token always stays)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor,
                generator: torch.Generator | None = None) -> int:
    """One token id from the last position's logits (V,)."""
    logits = apply_repetition_penalty(logits.float(), seen, params.repetition_penalty)
    if params.temperature == 0:
        return int(logits.argmax())
    logits = filter_logits(logits / params.temperature, params.top_k, params.top_p)
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate(model: Transformer, prompt: Sequence[int], params: SamplingParams, stop_ids: Sequence[int] = (),
             generator: torch.Generator | None = None) -> tuple[list[int], dict]:
    """New token ids after `prompt` (stop token excluded) and timing stats."""
    model.eval()
    device = next(model.parameters()).device
    budget = min(params.max_new_tokens, model.cfg.max_seq_len - len(prompt))
    if budget <= 0:
        raise ValueError(f"prompt of {len(prompt)} tokens leaves no room in model.max_seq_len={model.cfg.max_seq_len}")
    dtype = next(model.parameters()).dtype
    cache = KVCache.empty(model.cfg, 1, len(prompt) + budget, device, dtype)
    ids = torch.tensor([list(prompt)], device=device)
    seen = ids[0].clone()
    t0 = time.perf_counter()
    logits = model(ids, cache)[0, -1]  # prefill
    t_prefill = time.perf_counter() - t0
    out: list[int] = []
    stops = set(stop_ids)
    for _ in range(budget):
        nxt = sample_next(logits, params, seen, generator)
        if nxt in stops:
            break
        out.append(nxt)
        seen = torch.cat([seen, seen.new_tensor([nxt])])
        if len(out) == budget:
            break
        logits = model(torch.tensor([[nxt]], device=device), cache)[0, -1]
    total = time.perf_counter() - t0
    decode_time = max(total - t_prefill, 1e-9)
    return out, {"prefill_s": t_prefill, "decode_s": decode_time, "tokens": len(out),
                 "tokens_per_sec": len(out) / decode_time if out else 0.0}
