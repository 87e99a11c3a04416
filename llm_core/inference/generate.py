"""Sampling (temperature, top-k, top-p, repetition penalty), one row or many rows each with its own settings, and
`generate`: KV-cache decoding of one sequence, the plain reference the batched engine is tested against.

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


def filter_logits(logits: torch.Tensor, top_k, top_p) -> torch.Tensor:
    """Mask (to -inf) everything outside the top-k and outside the smallest set whose probability reaches top_p.

    logits (V,) or (B, V); top_k / top_p are numbers or (B,) tensors (one setting per row; top_k 0 = off).
    """
    one_row = logits.dim() == 1
    x = logits[None] if one_row else logits  # (B, V)
    B, V = x.shape
    k = torch.as_tensor(top_k, device=x.device).long().expand(B)
    p = torch.as_tensor(top_p, device=x.device, dtype=x.dtype).expand(B)
    sorted_x, order = torch.sort(x, descending=True, dim=-1)  # (B, V)
    k = torch.where((k <= 0) | (k > V), V, k)
    kth = sorted_x.gather(-1, (k - 1)[:, None])  # (B, 1)
    # ties with the k-th value stay, as torch.topk-based filters do
    sorted_x = sorted_x.masked_fill(sorted_x < kth, float("-inf"))
    probs = sorted_x.softmax(-1)
    # drop a token when the tokens ranked above it already reach top_p (the best token always stays)
    drop_sorted = ((probs.cumsum(-1) - probs) >= p[:, None]) & (p[:, None] < 1.0)
    drop_sorted |= torch.isinf(sorted_x)
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    out = x.masked_fill(drop, float("-inf"))
    return out[0] if one_row else out


def sample_next(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor,
                generator: torch.Generator | None = None) -> int:
    """One token id from the last position's logits (V,)."""
    logits = apply_repetition_penalty(logits.float(), seen, params.repetition_penalty)
    if params.temperature == 0:
        return int(logits.argmax())
    logits = filter_logits(logits / params.temperature, params.top_k, params.top_p)
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def sample_rows(logits: torch.Tensor, seen: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                top_p: torch.Tensor, penalty: torch.Tensor, generators: Sequence[torch.Generator | None],
                hot: Sequence[int] | None = None, penalise: bool = True, width: int | None = None) -> torch.Tensor:
    """One token per row, each row with its own settings: logits (B, V), seen (B, V) bool (tokens to penalise),
    settings (B,) each. A row with temperature 0 is greedy; the others draw with their own generator, so a seeded
    row gives the same tokens whatever else shares the batch. `hot` (the sampling rows), `penalise` (whether any row
    has a penalty) and `width` (the largest top-k of the hot rows, V for top-k off) may be passed by a caller that
    already knows them on the host: each one it leaves out costs a wait on the device.

    The draw works on the top-k candidates only (top-k, then top-p inside them, then inverse-CDF with one uniform
    number per row): sorting k of V logits instead of all of them is what keeps large batches cheap."""
    logits = logits.float()
    if penalise:
        pen = penalty[:, None]
        penalised = torch.where(logits > 0, logits / pen, logits * pen)
        logits = torch.where(seen, penalised, logits)
    out = logits.argmax(-1)  # (B,)
    if hot is None:
        hot = (temperature > 0).nonzero().flatten().tolist()
    if not hot:
        return out
    rows = torch.tensor(hot, device=logits.device)
    V = logits.shape[-1]
    k = top_k[rows]
    k = torch.where((k <= 0) | (k > V), V, k)  # (h,)
    width = int(k.max()) if width is None else width
    vals, idx = torch.topk(logits[rows] / temperature[rows, None], width, dim=-1)  # (h, width), best first
    rank = torch.arange(width, device=logits.device)
    vals = vals.masked_fill(rank >= k[:, None], float("-inf"))
    probs = vals.softmax(-1)
    p = top_p[rows, None]
    # drop a candidate when the ones ranked above it already reach top_p (the best one always stays)
    probs = probs.masked_fill(((probs.cumsum(-1) - probs) >= p) & (p < 1.0), 0.0)
    cdf = probs.cumsum(-1)
    u = torch.cat([torch.rand(1, generator=generators[i], device=logits.device) for i in hot])  # (h,)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp_(max=width - 1)  # (h, 1)
    out[rows] = idx.gather(-1, pick)[:, 0]
    return out


@torch.no_grad()
def generate(model: Transformer, prompt: Sequence[int], params: SamplingParams, stop_ids: Sequence[int] = (),
             generator: torch.Generator | None = None, special_ids: Sequence[int] = ()) -> tuple[list[int], dict]:
    """New token ids after `prompt` (stop token excluded) and timing stats. `special_ids` are never penalised."""
    model.eval()
    device = next(model.parameters()).device
    budget = min(params.max_new_tokens, model.cfg.max_seq_len - len(prompt))
    if budget <= 0:
        raise ValueError(f"prompt of {len(prompt)} tokens leaves no room in model.max_seq_len={model.cfg.max_seq_len}")
    dtype = next(model.parameters()).dtype
    cache = KVCache.empty(model.cfg, 1, len(prompt) + budget, device, dtype)
    ids = torch.tensor([list(prompt)], device=device)
    specials = set(special_ids)
    seen = torch.tensor([t for t in prompt if t not in specials], dtype=torch.long, device=device)
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
        if nxt not in specials:
            seen = torch.cat([seen, seen.new_tensor([nxt])])
        if len(out) == budget:
            break
        logits = model(torch.tensor([[nxt]], device=device), cache)[0, -1]
    total = time.perf_counter() - t0
    decode_time = max(total - t_prefill, 1e-9)
    return out, {"prefill_s": t_prefill, "decode_s": decode_time, "tokens": len(out),
                 "tokens_per_sec": len(out) / decode_time if out else 0.0}
