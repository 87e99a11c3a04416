"""Activation recomputation: keep only each chosen block's input in the forward pass and recompute the block's
activations during backward (torch.utils.checkpoint), trading about one extra forward for much less memory.

Applied from outside the model, before wrapping (as torchtitan orders it: recompute, compile, then FSDP/DDP), by
replacing the chosen blocks' `forward` on the instance: parameter names and checkpoints do not change, and DDP,
ZeRO-1, FSDP2 (which wraps the same block objects) and torch.compile see an ordinary module.
    full     every block
    every_k  blocks 0, k, 2k, ... (selective: about 1/k of the memory saved, 1/k of the extra compute)
The non-reentrant checkpoint replays RNG state, so dropout masks are the same in the replay and the gradients equal
those of a run without recomputation. A MoE block counts its routed tokens in the first pass only (the replay would
count them twice).
"""

from __future__ import annotations

import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from llm_core.model.moe import load_recording

MODES = ("none", "full", "every_k")


def _recomputed(forward):
    def run(*args, **kwargs):
        calls = [0]

        def body(*a, **kw):
            calls[0] += 1
            with load_recording(calls[0] == 1):
                return forward(*a, **kw)

        return checkpoint(body, *args, use_reentrant=False, **kwargs)

    return run


def apply_activation_checkpointing(model: nn.Module, mode: str, every: int = 2) -> int:
    """Make the chosen blocks of `model.layers` recompute in backward; returns how many were chosen."""
    if mode not in MODES:
        raise ValueError(f"activation checkpointing must be one of {', '.join(MODES)} (got {mode!r})")
    chosen = 0
    for i, block in enumerate(model.layers):
        if mode == "full" or (mode == "every_k" and i % every == 0):
            block.forward = _recomputed(block.forward)
            chosen += 1
    return chosen
