"""The loss and every metric derived from it, defined once for training, validation and evaluation.

- loss: mean cross-entropy (nats) over the target tokens (targets != IGNORE), special tokens included: it is the
  quantity the optimizer minimises, so `val_loss` and `train_loss` average over the same kind of tokens.
- ppl: exp(loss).
- token_acc: share of target tokens whose top-1 prediction is right.
- bpb (bits per byte): nats of the *text* tokens over ln 2 times their UTF-8 bytes. Special tokens (zero bytes in the
  tokenizer's byte table) stand for no text and count in neither sum, so bpb compares across tokenizers
  (nanochat's convention).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llm_core.data.loader import IGNORE


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over target tokens: `mean`, `sum`, or `none` (per position, 0 where the target is IGNORE)."""
    # logits in fp32 for the softmax: bf16 log-probs of a 50k vocab are too coarse
    flat = targets.reshape(-1)
    losses = F.cross_entropy(logits.float().view(-1, logits.size(-1)), flat, ignore_index=IGNORE,
                             reduction="none" if reduction == "none" else "sum")
    if reduction != "mean":
        return losses
    # a batch with no target token (all masked) contributes zero loss instead of 0/0 = NaN
    return losses / (flat != IGNORE).sum().clamp(min=1)


class TokenMetrics:
    """Running sums over batches; `sums` is one float64 tensor so a single all-reduce combines the ranks."""

    FIELDS = ("nats", "tokens", "correct", "text_nats", "text_bytes")

    def __init__(self, device: torch.device | str = "cpu", token_bytes: torch.Tensor | None = None):
        self.sums = torch.zeros(len(self.FIELDS), dtype=torch.float64, device=device)
        self.token_bytes = token_bytes

    @torch.no_grad()
    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        flat = targets.reshape(-1)
        losses = loss_fn(logits, targets, reduction="none")
        mask = flat != IGNORE
        pred = logits.reshape(-1, logits.size(-1)).argmax(-1)
        self.sums[0] += losses[mask].sum().double()
        self.sums[1] += mask.sum()
        self.sums[2] += (pred[mask] == flat[mask]).sum()
        if self.token_bytes is not None:
            nbytes = self.token_bytes[flat.clamp(min=0)] * mask
            text = nbytes > 0
            self.sums[3] += losses[text].sum().double()
            self.sums[4] += nbytes.sum()

    def result(self) -> dict:
        nats, tokens, correct, text_nats, text_bytes = self.sums.tolist()
        if tokens == 0:
            return {}
        loss = nats / tokens
        out = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "token_acc": correct / tokens}
        if self.token_bytes is not None and text_bytes > 0:
            out["bpb"] = text_nats / (math.log(2) * text_bytes)
        return out
