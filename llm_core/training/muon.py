"""Muon with its Newton-Schulz iterations batched over matrices of one shape.

The update is torch.optim.Muon's, step for step (Keller Jordan's Muon; `match_rms_adamw` from Moonshot's "Muon is
Scalable"): Nesterov momentum, then 5 quintic Newton-Schulz iterations (bf16 on GPUs, fp32 on CPUs) that
orthogonalise each matrix's update, decoupled weight decay, and a shape-dependent learning-rate scale. torch.optim.Muon runs those iterations one matrix
at a time: on `124m` a step is ~2,500 small kernels (launch-bound on a GPU, where AdamW's fused step is one).

Here the momentum and weight-decay updates are `torch._foreach_*` calls over all matrices, and the matrices whose
oriented shape agrees (wide as they are, tall ones transposed, as Muon orthogonalises the short side) are stacked and
iterated together with batched matmuls: one set of ~20 kernels per shape group (4 groups in `124m`: q/k/v/o, and
w1/w2/w3 all 768 x 2048 once oriented). The arithmetic per matrix is the same as torch's, so results agree to bf16
round-off (tests/unit/test_muon.py). Hyperparameters and state (`momentum_buffer`) have torch's names, so
checkpoints move between the two.

Sharded parameters (FSDP2 DTensors) are gathered per matrix for the iterations, which need whole matrices, and each
rank keeps its own shard of the result.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

# Keller Jordan's quintic coefficients and defaults, as torch.optim.Muon
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
EPS = 1e-7


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """Muon's per-shape learning rate (torch.optim.Muon's rule): `original` keeps tall matrices' update RMS,
    `match_rms_adamw` matches AdamW's update RMS so one lr serves both optimizers."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


def ns_dtype_for(device: torch.device) -> torch.dtype:
    """The Newton-Schulz dtype: bf16 on GPUs (torch.optim.Muon's choice, tensor cores), fp32 on CPUs, where bf16
    matmuls without AVX512-BF16/AMX run ~10x slower than fp32 (measured on a 2-core AVX2 EPYC: a Muon step of the
    default model took as long as its forward and backward together). fp32 is the more exact of the two."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def newton_schulz(x: torch.Tensor, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  steps: int = NS_STEPS, eps: float = EPS, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Orthogonalise each matrix of a (n, rows, cols) stack with rows <= cols, in `dtype`; returns that stack."""
    a, b, c = coefficients
    x = x.to(dtype)
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT  # (n, rows, rows)
        gram_update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = torch.baddbmm(x, gram_update, x, beta=a)  # a X + (b G + c G^2) X
    return x


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`full` (a whole matrix) as `ref` holds it: the local shard of a DTensor, else itself."""
    if not hasattr(ref, "full_tensor"):
        return full
    from torch.distributed.tensor import DTensor, Replicate

    whole = DTensor.from_local(full, ref.device_mesh, [Replicate()] * ref.device_mesh.ndim, run_check=False)
    return whole.redistribute(ref.device_mesh, ref.placements)  # slicing only: every rank holds the whole result


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon's algorithm and arguments, batched over same-shape matrices. 2-D parameters only."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = EPS, ns_steps: int = NS_STEPS, adjust_lr_fn: str | None = None,
                 ns_dtype: torch.dtype | None = None):
        if not lr >= 0 or not momentum >= 0 or not weight_decay >= 0:
            raise ValueError(f"Muon: lr, momentum and weight_decay must be >= 0 (got {lr}, {momentum}, "
                             f"{weight_decay})")
        if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"Muon: adjust_lr_fn must be original or match_rms_adamw (got {adjust_lr_fn!r})")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        # not a param-group key, so state dicts keep torch.optim.Muon's keys; None = ns_dtype_for(the device)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D parameters only (got one of shape {tuple(p.shape)})")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, momentum = group["lr"], group["momentum"]
        grads = [p.grad for p in params]
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        torch._foreach_lerp_(bufs, grads, 1 - momentum)
        updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs

        # stacks of one oriented shape (rows <= cols); within a stack, matrices of one stored shape share a lr
        stacks: dict[tuple, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            rows, cols = p.shape
            stacks[(min(rows, cols), max(rows, cols), p.dtype, p.device)].append(i)
        orthogonal: list[torch.Tensor | None] = [None] * len(params)
        for members in stacks.values():
            full = [_full(updates[i]) for i in members]
            tall = [u.shape[0] > u.shape[1] for u in full]
            x = torch.stack([u.mT if t else u for u, t in zip(full, tall)])  # (n, rows, cols)
            x = newton_schulz(x, group["ns_coefficients"], group["ns_steps"], group["eps"],
                              self.ns_dtype or ns_dtype_for(x.device))
            # back in the parameters' dtype and layout (exact where bf16 widens to fp32), so the final add is one
            # fused foreach kernel instead of one mixed-dtype, strided add per matrix
            for flag in (False, True):
                rows = [j for j, t in enumerate(tall) if t == flag]
                if rows:
                    part = (x if len(rows) == len(tall) else x[rows]).to(params[members[0]].dtype)
                    part = part.mT.contiguous() if flag else part
                    for j, o in zip(rows, part.unbind(0)):
                        orthogonal[members[j]] = _like(o, params[members[j]])

        torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        by_lr: dict[float, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            by_lr[adjusted_lr(lr, group["adjust_lr_fn"], p.shape)].append(i)
        for step_lr, members in by_lr.items():
            torch._foreach_add_([params[i] for i in members], [orthogonal[i] for i in members], alpha=-step_lr)
