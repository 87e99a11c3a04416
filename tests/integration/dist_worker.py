"""One training run per (mode, optimizer) on tiny deterministic data; started by torchrun from test_distributed.py.

Usage: python -m tests.integration.dist_worker OUT_DIR BATCH_SIZE MODE:OPTIMIZER[:EVAL_BATCHES] [...]
Each run writes OUT_DIR/<name>/ (final model) and OUT_DIR/<name>_live/ (curves), <name> = run_name(...).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from llm_core import distributed
from llm_core.config import ModelConfig, ParallelConfig, TrainConfig
from llm_core.data.loader import StreamRows
from llm_core.training.loop import Job, train

STEPS = 10


def model_config() -> ModelConfig:
    return ModelConfig(preset="tiny", n_layers=2, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64,
                       max_seq_len=32).resolved(128)


def train_config(optimizer: str, batch_size: int, **kw) -> TrainConfig:
    base = dict(steps=STEPS, batch_size=batch_size, seq_len=16, optimizer=optimizer, lr=3e-3, warmup_steps=2,
                eval_every=5, eval_batches=2, checkpoint_every=5, keep_checkpoints=1, threads=1, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def job(out: Path, name: str) -> Job:
    rng = np.random.default_rng(0)
    stream = ((np.arange(8_000) * 5) % 113 + rng.integers(0, 5, 8_000)).astype(np.uint16)
    val = ((np.arange(1_000) * 5) % 113).astype(np.uint16)
    return Job(StreamRows([stream], 16), StreamRows([val], 16), out / name, out / f"{name}_live",
               token_bytes=np.ones(128, dtype=np.int64), data_fingerprint="dist", desc="pretrain")


def run_name(mode: str, optimizer: str, eval_batches: int | None = None) -> str:
    return f"{mode}-{optimizer}" + (f"-e{eval_batches}" if eval_batches else "")


def main() -> None:
    out, batch_size, *runs = sys.argv[1:]
    for run in runs:
        mode, optimizer, *rest = run.split(":")
        extra = {"eval_batches": int(rest[0])} if rest else {}
        train(model_config(), train_config(optimizer, int(batch_size), **extra), ParallelConfig(mode=mode),
              job(Path(out), run_name(mode, optimizer, *(int(r) for r in rest))))
    distributed.teardown()


if __name__ == "__main__":
    main()
