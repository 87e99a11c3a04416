"""Training-loop overhead: our `train()` vs a bare PyTorch loop on the same model, batches and optimizer.

Both loops run the same math per step (forward, backward, clip, AdamW/Muon step, LR schedule); ours also logs every
step to dvclive, keeps the progress bar, checks for non-finite values and writes a checkpoint at the end. Both are
timed in the same process, alternating; each figure is the median step time (robust to other jobs on a shared
machine), best of `--repeats`; once-per-run costs (set-up, the final checkpoint) are left out of both. The last
line is JSON with `overhead` = ours / bare (time per step; 1.00 = free).

    python bench/engine.py [--steps 15] [--repeats 3] [--optimizer adamw]
"""

from __future__ import annotations

import os
import sys

# run as a script, bench/ comes first on sys.path, where a sibling benchmark (tokenize.py) would shadow the stdlib
# module of that name; the repository root is what the imports below need
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from llm_core.config import ModelConfig, ParallelConfig, TrainConfig  # noqa: E402
from llm_core.data.loader import Loader, DocRows  # noqa: E402
from llm_core.evaluation.metrics import loss_fn  # noqa: E402
from llm_core.model.transformer import Transformer  # noqa: E402
from llm_core.training import optim  # noqa: E402
from llm_core.training.loop import Job, train  # noqa: E402


def bare(model_cfg: ModelConfig, cfg: TrainConfig, rows: DocRows) -> float:
    """Median seconds per step of the plain loop."""
    torch.manual_seed(cfg.seed)
    model = Transformer(model_cfg)
    opts = optim.build_optimizers(model, cfg, "cpu")
    loader = Loader(rows, cfg.batch_size, seed=cfg.seed)
    params = list(model.parameters())
    times = []
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        optim.set_lr(opts, optim.lr_factor(step, cfg))
        x, y = loader.next_batch()
        loss_fn(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ours(model_cfg: ModelConfig, cfg: TrainConfig, rows: DocRows, tmp: Path, i: int) -> tuple[float, float]:
    """(median seconds per step, whole run) of `train()`. The per-step figure comes from the loop's own
    `train/tokens_per_sec` curve: each point spans everything from one step's end to the next one's (the step, the
    dvclive writes, the progress bar) but validation and checkpoint writes, which the loop times apart, so nothing
    of the training loop escapes it; set-up and the final checkpoint do."""
    job = Job(rows, None, tmp / f"run{i}", tmp / f"live{i}", data_fingerprint="bench", desc="bench")
    t0 = time.perf_counter()
    train(model_cfg, cfg, ParallelConfig(), job)
    wall = time.perf_counter() - t0
    with open(tmp / f"live{i}" / "plots" / "metrics" / "train" / "tokens_per_sec.tsv") as f:
        tps = [float(line.split("\t")[-1]) for line in f.readlines()[1:]]
    return cfg.batch_size * cfg.seq_len / statistics.median(tps), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--optimizer", default="adamw", choices=("adamw", "muon"))
    args = ap.parse_args()
    # the default CPU model (tiny preset) on 8 x 128 tokens per step: seconds per run on 2 cores
    model_cfg = ModelConfig(preset="tiny").resolved(2048)
    cfg = TrainConfig(steps=args.steps, batch_size=8, seq_len=128, optimizer=args.optimizer, warmup_steps=5,
                      eval_every=10**6, checkpoint_every=10**6, precision="fp32", compile=False)
    stream = np.random.default_rng(0).integers(0, 2048, 2_000_000).astype(np.uint16)
    rows = DocRows([stream], cfg.seq_len)
    tokens = cfg.batch_size * cfg.seq_len
    times: dict[str, list[float]] = {"bare": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        # one-off costs out of the way first: the dvclive import, allocator and kernel warm-up
        train(model_cfg, dataclasses.replace(cfg, steps=2), ParallelConfig(),
              Job(rows, None, Path(tmp) / "warm", Path(tmp) / "warm-live", data_fingerprint="bench", desc="bench"))
        for i in range(args.repeats):
            times["bare"].append(bare(model_cfg, cfg, rows))
            times["ours"].append(ours(model_cfg, cfg, rows, Path(tmp), i)[0])
    best = {k: min(v) for k, v in times.items()}
    print(f"\n{'loop':<8}{'s/step':>10}{'tokens/s':>12}   ({args.steps} steps, {args.optimizer}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats})")
    for k in ("bare", "ours"):
        print(f"{k:<8}{best[k]:>10.4f}{tokens / best[k]:>12.0f}")
    overhead = best["ours"] / best["bare"]
    print(json.dumps({"overhead": round(overhead, 4), "bare_tokens_per_sec": round(tokens / best["bare"], 1),
                      "ours_tokens_per_sec": round(tokens / best["ours"], 1),
                      "steps": args.steps, "optimizer": args.optimizer}))


if __name__ == "__main__":
    main()
