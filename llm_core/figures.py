"""How figures are printed: fixed decimals chosen by what a figure is, never exponent notation, so that the step
lines of a run and the closing figures of every stage read at a glance and line up."""

from __future__ import annotations


def fixed(key: str, value: float) -> str:
    """A figure in fixed notation, with decimals by what it is: throughput whole, learning rates to 1e-6, the rest to
    1e-4 (losses, bpb, accuracies, gradient norms), so a column of step lines reads at a glance."""
    if key.endswith("tokens_per_sec"):
        return f"{value:,.0f}"
    if key.endswith("mfu"):
        return f"{value:.1%}"
    if key.endswith("lr"):
        return f"{value:.6f}"
    return f"{value:.4f}"


def line(metrics: dict) -> str:
    """A stage's closing figures on one line: `val_loss 0.5504  val_bpb 0.1868  best_step 650 ...`."""
    return "  ".join(f"{k} {fixed(k, v) if isinstance(v, float) else v}" for k, v in metrics.items())
