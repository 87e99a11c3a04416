"""Parameter groups, optimizers (AdamW, Muon) and learning-rate schedules.

Weight decay applies to 2-D weight matrices only: decaying norms' gains or embeddings pulls them toward zero for no
regularisation benefit. Muon orthogonalises the update of hidden 2-D matrices; embeddings, the output head and
the gains stay with AdamW (Muon's update is only meaningful for matrices that act as linear maps between hidden
spaces). Muon is `llm_core.training.muon.Muon`: torch.optim.Muon's update, batched over same-shape matrices.
`adjust_lr_fn="match_rms_adamw"` scales Muon's update to AdamW's RMS so one `lr` serves both.
The schedule is a pure function of the step, so resuming needs no scheduler state beyond the step counter.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from llm_core.config import TrainConfig
from llm_core.training.muon import Muon


def param_groups(model: nn.Module, weight_decay: float) -> tuple[list, list, list, list]:
    """(hidden matrices, stacked expert weights (3-D), embedding/head matrices, gains and other 1-D) — tied weights
    appear once."""
    hidden, stacked, embed, flat = [], [], [], []
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim < 2:
            flat.append(p)
        elif "tok_emb" in name or "lm_head" in name:
            embed.append(p)
        elif p.ndim > 2:
            stacked.append(p)
        else:
            hidden.append(p)
    return hidden, stacked, embed, flat


def build_optimizers(model: nn.Module, cfg: TrainConfig, device_type: str,
                     shard: bool = False) -> list[torch.optim.Optimizer]:
    """[Muon (hidden matrices),] AdamW (the rest). `shard` (ZeRO-1): each rank keeps the state of, and updates,
    only its share of the parameters, then broadcasts them (torch's ZeroRedundancyOptimizer, for both kinds)."""
    hidden, stacked, embed, flat = param_groups(model, cfg.weight_decay)
    betas = (cfg.beta1, cfg.beta2)
    # fused AdamW is one kernel per step on CUDA; on CPU foreach is the fast path
    fused = device_type == "cuda"
    adam_groups = [{"params": embed, "weight_decay": 0.0}, {"params": flat, "weight_decay": 0.0}]
    # the experts' stacked (E, out, in) weights stay with AdamW under Muon too: Muon takes 2-D matrices
    adam_groups.insert(0, {"params": stacked, "weight_decay": cfg.weight_decay})
    if cfg.optimizer == "adamw":
        adam_groups.insert(0, {"params": hidden, "weight_decay": cfg.weight_decay})
    adam_groups = [g for g in adam_groups if g["params"]]

    def make(cls, groups, **kw):
        if not shard:
            return cls(groups, **kw)
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(groups, optimizer_class=cls, **kw)

    optimizers: list[torch.optim.Optimizer] = [
        make(torch.optim.AdamW, adam_groups, lr=cfg.lr, betas=betas, eps=1e-8, fused=fused or None,
             foreach=None if fused else True)]
    if cfg.optimizer == "muon" and hidden:
        optimizers.insert(0, make(Muon, hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.95,
                                  nesterov=True, adjust_lr_fn="match_rms_adamw"))
    for opt in optimizers:
        for g in opt.param_groups:
            g["base_lr"] = cfg.lr
    return optimizers


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak LR at `step` (0-based): linear warmup, then cosine / warmup-stable-decay / constant."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        span = max(1, cfg.steps - 1 - cfg.warmup_steps)  # the last step lands on the floor
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd: stable at the peak, then a linear decay to the floor over the last 20% of steps
    decay_start = int(cfg.steps * 0.8)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, cfg.steps - 1 - decay_start))
    return 1.0 - (1 - floor) * progress


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> float:
    lr = 0.0
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = lr = g["base_lr"] * factor
    return lr
