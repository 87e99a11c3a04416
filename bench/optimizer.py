"""Muon's optimizer step: our batched Newton-Schulz (`llm_core.training.muon.Muon`) against torch.optim.Muon, which
iterates one matrix at a time, measured in the same run.

Two figures per optimizer, on the hidden matrices of a preset (what Muon owns in `llm_core.training.optim`):
- ops per step: aten operators dispatched by one step, counted on meta tensors (no memory, no compute: the count is
  exact for any device) and split into kernels (ops that compute) and views (free). On a GPU every kernel is a launch
  of ~5-10 us, so a step of thousands of small kernels costs milliseconds even when the math is cheap;
- time per step: the median of `--repeats` steps with real tensors on this machine's device: CUDA wall time when
  present, else this process's CPU time (a shared CPU's wall time measures the other jobs) with `--time-preset`,
  tiny by default (bf16 matmuls are slow on CPUs).
AdamW (foreach) over the same matrices is counted for scale: it is one fused kernel on CUDA (`fused=True`, what the
training loop uses there).

    python bench/optimizer.py                    # ops for 124m; time for 124m on CUDA, for `tiny` on a CPU
    python bench/optimizer.py --smoke            # tiny shapes, seconds: proves the command end to end

The last line of output is a JSON object; `ratio_ops` and `ratio_time` are torch / ours (higher is better for ours).
"""

from __future__ import annotations

import os
import sys

# run as a script, bench/ comes first on sys.path, where a sibling benchmark would shadow a stdlib module
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from llm_core.config import PRESETS, ModelConfig  # noqa: E402
from llm_core.model.transformer import Transformer  # noqa: E402
from llm_core.training import optim  # noqa: E402
from llm_core.training.muon import Muon  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
KW = dict(lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True, adjust_lr_fn="match_rms_adamw")


class _OpCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.kernels = self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.is_view:
            self.views += 1
        else:
            self.kernels += 1
        return func(*args, **(kwargs or {}))


def _hidden(preset: str, device: str) -> list[torch.nn.Parameter]:
    """The matrices Muon owns in a `preset` model (vocab 2048: the embedding is AdamW's), with gradients."""
    cfg = ModelConfig(preset=preset).resolved(2048)
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(cfg)
    hidden = optim.param_groups(model, 0.1)[0]
    for p in hidden:
        p.grad = torch.randn_like(p) if device != "meta" else torch.empty_like(p)
    return hidden


OPTIMIZERS = {
    "torch": lambda params: torch.optim.Muon(params, **KW),
    "ours": lambda params: Muon(params, **KW),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, foreach=True),
}


def count_ops(preset: str) -> dict:
    out = {}
    for name, make in OPTIMIZERS.items():
        opt = make(_hidden(preset, "meta"))
        opt.step()  # the first step creates the state
        with _OpCount() as c:
            opt.step()
        out[name] = {"kernels": c.kernels, "views": c.views}
    return out


def time_steps(preset: str, repeats: int) -> dict:
    device = "cuda" if HAS_CUDA else "cpu"
    out = {}
    for name in ("torch", "ours"):
        opt = OPTIMIZERS[name](_hidden(preset, device))
        opt.step()
        clock = time.perf_counter if HAS_CUDA else time.process_time
        times = []
        for _ in range(repeats):
            if HAS_CUDA:
                torch.cuda.synchronize()
            t0 = clock()
            opt.step()
            if HAS_CUDA:
                torch.cuda.synchronize()
            times.append(clock() - t0)
        out[name] = {"step_ms": round(statistics.median(times) * 1e3, 3)}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="124m", help="shapes of the op count")
    ap.add_argument("--time-preset", choices=sorted(PRESETS), help="shapes of the timing (default: --preset on "
                    "CUDA, tiny on a CPU)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 3 repeats")
    args = ap.parse_args(argv)
    if args.smoke:
        args.preset, args.time_preset, args.repeats = "tiny", "tiny", 3
    time_preset = args.time_preset or (args.preset if HAS_CUDA else "tiny")
    device = torch.cuda.get_device_name() if HAS_CUDA else "cpu"
    num = len(_hidden(args.preset, "meta"))
    print(f"Muon step on {device}: {num} hidden matrices of {args.preset} (ops), {time_preset} (time)", flush=True)

    ops = count_ops(args.preset)
    for name, c in ops.items():
        print(f"  {name:<6} {c['kernels']:>6} kernels {c['views']:>6} views per step", flush=True)
    timing = time_steps(time_preset, args.repeats)
    for name, t in timing.items():
        print(f"  {name:<6} {t['step_ms']:>9.3f} ms per step ({time_preset}, {device}"
              f"{'' if HAS_CUDA else ', CPU time'})", flush=True)
    summary = {"benchmark": "optimizer", "device": device, "torch": torch.__version__, "preset": args.preset,
               "time_preset": time_preset, "matrices": num, "ops": ops, "time": timing,
               "ratio_ops": round(ops["torch"]["kernels"] / ops["ours"]["kernels"], 2),
               "ratio_time": round(timing["torch"]["step_ms"] / timing["ours"]["step_ms"], 2)}
    print(f"torch / ours: {summary['ratio_ops']}x kernels, {summary['ratio_time']}x time")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
