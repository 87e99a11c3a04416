"""Mixture of Experts feed-forward (DeepSeek-V3 style): shared experts every token uses, plus top-k routed experts.

Routing (the `Router`): scores = sigmoid (or softmax) of a linear map of the token, in fp32 so that bf16 round-off
does not flip decisions. Auxiliary-loss-free balancing (DeepSeek-V3, Wang et al. 2024): a per-expert bias is added to
the scores only to *choose* the top-k experts; the gate weights that scale the experts' outputs use the unbiased
scores, so the bias steers load without distorting what the model computes. After every optimizer step the training
loop calls `MoE.update_bias` with the step's token counts (summed over ranks): bias += rate * sign(mean - load),
which raises under-used experts and lowers over-used ones. The bias is a persistent buffer, so it is saved in every
checkpoint and in the exported model (`e_score_correction_bias` in the Hugging Face DeepSeek-V3 format).
With sigmoid scores the top-k gate weights are renormalised to sum to 1 (sigmoids do not); softmax weights are used
as they are (DeepSeek-V2). An optional sequence-level balance loss (DeepSeek-V3 eq. 17-20) is kept in `aux_loss`
for the loop to add to the training loss when model.aux_loss_weight > 0.

Two expert paths compute the same function: `experts_loop` (one matmul per expert over its tokens: the reference) and
`experts_grouped` (tokens sorted by expert, three `torch._grouped_mm` calls for all experts at once). Both run the
experts' matmuls in the compute dtype: autocast's where it is on (the residual stream, and so the expert input, stays
fp32 under autocast, and `torch._grouped_mm` has no autocast rule), else the input's. `moe_path: auto` takes the
grouped path where `torch._grouped_mm` runs for that device and compute dtype (on CUDA: bf16 from compute capability
9.0) and the widths meet its alignment rule (`grouped_mm_aligned`); the loop needs a host sync per expert.

Shapes: N tokens (batch x time), D d_model, E experts, K top_k, F expert hidden width.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_core.config import ModelConfig
from llm_core.model.layers import FeedForward

_recording = True  # off while activation recomputation replays a forward: its tokens were counted already


@contextlib.contextmanager
def load_recording(enabled: bool):
    """Count routed tokens (for balancing) only when `enabled`; the recomputation wrapper turns it off."""
    global _recording
    previous, _recording = _recording, enabled
    try:
        yield
    finally:
        _recording = previous


class Router(nn.Module):
    def __init__(self, d_model: int, n_experts: int, top_k: int, score_func: str):
        super().__init__()
        self.top_k, self.score_func = top_k, score_func
        self.weight = nn.Parameter(torch.empty(n_experts, d_model))
        # steers the choice only; persistent: part of the model's state in checkpoints and exports
        self.register_buffer("expert_bias", torch.zeros(n_experts), persistent=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, D) -> gate weights (N, K) fp32, expert ids (N, K), scores (N, E) fp32."""
        logits = F.linear(x.float(), self.weight.float())  # (N, E)
        scores = logits.sigmoid() if self.score_func == "sigmoid" else logits.softmax(dim=-1)
        idx = torch.topk(scores + self.expert_bias, self.top_k, dim=-1, sorted=False).indices  # (N, K)
        weights = scores.gather(-1, idx)
        if self.score_func == "sigmoid":
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights, idx, scores


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the experts' matmuls run in: autocast's where it is on, else x's."""
    dev = x.device.type
    if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):  # (meta tensors have no autocast)
        return torch.get_autocast_dtype(dev)
    return x.dtype


def experts_loop(x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
                 w2: torch.Tensor) -> torch.Tensor:
    """The reference: for each expert, SwiGLU over the tokens routed to it, scaled by their gate weights."""
    out = torch.zeros_like(x)  # (N, D)
    token = torch.arange(x.shape[0], device=x.device).repeat_interleave(idx.shape[1])  # (N*K,)
    flat, gate = idx.flatten(), weights.flatten()
    dt = compute_dtype(x)
    for e in range(w1.shape[0]):
        sel = (flat == e).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        t = token[sel]
        xe = x[t].to(dt)
        h = F.silu(xe @ w1[e].to(dt).t()) * (xe @ w3[e].to(dt).t())  # (n_e, F)
        out.index_add_(0, t, ((h @ w2[e].to(dt).t()) * gate[sel, None]).to(x.dtype))
    return out


def grouped_mm_aligned(dtype: torch.dtype, *widths: int) -> bool:
    """torch._grouped_mm's rule on CUDA: every operand's row stride is a multiple of 16 bytes, so d_model and the
    expert width must be multiples of 8 in bf16 (the default expert_hidden is a multiple of 64)."""
    size = torch.empty((), dtype=dtype).element_size()
    return all(w * size % 16 == 0 for w in widths)


def experts_grouped(x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
                    w2: torch.Tensor) -> torch.Tensor:
    """All experts in three grouped matmuls over the (token, choice) pairs sorted by expert."""
    E, K = w1.shape[0], idx.shape[1]
    flat = idx.flatten()  # (N*K,)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(E, dtype=torch.int32, device=x.device).index_add_(
        0, flat, torch.ones_like(flat, dtype=torch.int32))
    offs = torch.cumsum(counts, 0, dtype=torch.int32)  # end row of each expert's group
    token = order // K
    dt = compute_dtype(x)
    xs = x[token].to(dt)  # (N*K, D), grouped by expert
    h = F.silu(torch._grouped_mm(xs, w1.to(dt).transpose(-2, -1), offs=offs)) * torch._grouped_mm(
        xs, w3.to(dt).transpose(-2, -1), offs=offs)  # (N*K, F)
    ys = torch._grouped_mm(h, w2.to(dt).transpose(-2, -1), offs=offs)  # (N*K, D)
    ys = ys * weights.flatten()[order, None]
    return torch.zeros_like(x).index_add_(0, token, ys.to(x.dtype))


def grouped_mm_runs(device_type: str, dtype: torch.dtype) -> bool:
    """Whether torch._grouped_mm works here (CPU in recent torch; CUDA from compute capability 9.0, bf16)."""
    return _grouped_mm_probe(device_type, dtype)


def _probe_is_constant_when_compiled() -> None:
    """torch.compile takes the probe's answer as a constant instead of tracing it. Marked when the first MoE layer is
    built, not at import: the mark imports torch._dynamo (about 3 s on a CPU), which every stage process would
    otherwise pay, dense models and evaluation-only stages included."""
    global grouped_mm_runs
    if not getattr(grouped_mm_runs, "_marked_constant", False):
        grouped_mm_runs = torch.compiler.assume_constant_result(grouped_mm_runs)
        grouped_mm_runs._marked_constant = True


@functools.cache
def _grouped_mm_probe(device_type: str, dtype: torch.dtype) -> bool:
    if not hasattr(torch, "_grouped_mm"):
        return False
    if device_type == "cuda":
        return torch.cuda.get_device_capability()[0] >= 9 and dtype == torch.bfloat16
    try:
        a = torch.ones(4, 8, device=device_type, dtype=dtype)
        b = torch.ones(2, 8, 8, device=device_type, dtype=dtype)
        torch._grouped_mm(a, b, offs=torch.tensor([2, 4], dtype=torch.int32, device=device_type))
        return True
    except (RuntimeError, NotImplementedError):
        return False


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        _probe_is_constant_when_compiled()
        E, D, Fh = cfg.n_experts, cfg.d_model, cfg.expert_hidden
        self.n_experts, self.path = E, cfg.moe_path
        self.aux_weight, self.bias_rate = cfg.aux_loss_weight, cfg.bias_update_rate
        self.router = Router(D, E, cfg.top_k, cfg.score_func)
        # stacked (E, out, in) like nn.Linear weights: one tensor per projection for the grouped matmul
        self.w1 = nn.Parameter(torch.empty(E, Fh, D))  # gate
        self.w3 = nn.Parameter(torch.empty(E, Fh, D))  # up
        self.w2 = nn.Parameter(torch.empty(E, D, Fh))  # down
        self.shared = FeedForward(D, Fh * cfg.n_shared_experts) if cfg.n_shared_experts else None
        # tokens routed to each expert since the loop last read them; a plain attribute, not a buffer, so that
        # DDP's buffer broadcast never overwrites one rank's counts with another's
        self.tokens_per_expert: torch.Tensor | None = None
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        flat = x.reshape(B * T, D)
        weights, idx, scores = self.router(flat)
        if self.training and _recording:
            counts = torch.zeros(self.n_experts, device=x.device).index_add_(
                0, idx.flatten(), torch.ones(idx.numel(), device=x.device))
            self.tokens_per_expert = counts if self.tokens_per_expert is None else self.tokens_per_expert + counts
        if self.training and self.aux_weight > 0:
            self.aux_loss = self.aux_weight * sequence_balance_loss(scores.view(B, T, -1), idx.view(B, T, -1))
        use_grouped = self.path == "grouped" or (self.path == "auto" and self.grouped_runs(x))
        routed = (experts_grouped if use_grouped else experts_loop)(flat, idx, weights, self.w1, self.w3, self.w2)
        out = routed.view(B, T, D)
        return out + self.shared(x) if self.shared is not None else out

    def grouped_runs(self, x: torch.Tensor) -> bool:
        """Whether `auto` takes the grouped path for this input: decided by the dtype the matmuls really run in."""
        dt = compute_dtype(x)
        if torch.compiler.is_compiling() and dt != torch.bfloat16:
            return False  # traced, the op follows its CUDA rule on every device: bf16 only
        return grouped_mm_aligned(dt, self.w1.shape[2], self.w1.shape[1]) and grouped_mm_runs(x.device.type, dt)

    def take_load(self) -> torch.Tensor:
        """Tokens routed to each expert since the last call (E,), then start counting afresh."""
        counts = self.tokens_per_expert
        self.tokens_per_expert = None
        return counts if counts is not None else torch.zeros(self.n_experts, device=self.w1.device)

    @torch.no_grad()
    def update_bias(self, load: torch.Tensor) -> None:
        """One balancing step from the token counts of an optimizer step (summed over ranks)."""
        self.router.expert_bias += self.bias_rate * torch.sign(load.mean() - load)


def sequence_balance_loss(scores: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3's sequence-wise balance loss without its weight: per sequence, sum over experts of
    f_e (share of the sequence's choices that went to e, times E / K) x P_e (mean normalised score), averaged.
    scores (B, T, E), idx (B, T, K)."""
    B, T, E = scores.shape
    K = idx.shape[-1]
    chosen = torch.zeros(B, E, device=scores.device).scatter_add_(
        1, idx.reshape(B, T * K), torch.ones(B, T * K, device=scores.device))
    f = chosen * E / (K * T)  # (B, E), no gradient: counts
    p = (scores / scores.sum(dim=-1, keepdim=True)).mean(dim=1)  # (B, E)
    return (f * p).sum(dim=-1).mean()
