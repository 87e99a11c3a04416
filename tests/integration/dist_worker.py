"""One training run per (mode, optimizer) on tiny deterministic data; started by torchrun from test_distributed.py.

Usage: python -m tests.integration.dist_worker OUT_DIR BATCH_SIZE MODE:OPTIMIZER[:moe][:global] [...]
Each run writes OUT_DIR/<name>/ (final model) and OUT_DIR/<name>_live/ (curves), <name> = run_name(...); `:moe` trains
the mixture-of-experts variant (latent attention, experts with loss-free balancing and recomputation); `:global` is
the short run of GLOBAL: a global batch and a validation set given over all ranks, whatever their number.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from llm_core import distributed
from llm_core.config import ModelConfig, ParallelConfig, TrainConfig
from llm_core.data.loader import DocRows
from llm_core.training.loop import Job, train
from tests import helpers

STEPS = 10
# 128 tokens per step over all ranks (1 process: 2 micro-batches of 4 rows; 2 ranks: 1 each) and 11 validation rows
# over all ranks: the second global batch of 2 x 4 rows leaves rank 1 nothing to score
GLOBAL = dict(steps=2, eval_every=1, global_batch_tokens=128, global_eval_tokens=11 * 16)


def model_config(moe: bool = False) -> ModelConfig:
    extra = dict(attention_type="mla", ffn="moe", n_experts=4, top_k=2, expert_hidden=16, bias_update_rate=0.01,
                 first_dense_layers=1, aux_loss_weight=0.01) if moe else {}
    return helpers.tiny_model_config(128, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=32,
                                     **extra)


def train_config(optimizer: str, batch_size: int, **kw) -> TrainConfig:
    base = dict(steps=STEPS, batch_size=batch_size, seq_len=16, optimizer=optimizer, eval_every=5, checkpoint_every=5,
                keep_checkpoints=1, threads=1, seed=7)
    base.update(kw)
    return helpers.train_config(**base)


def job(out: Path, name: str) -> Job:
    rng = np.random.default_rng(0)
    stream = ((np.arange(8_000) * 5) % 113 + rng.integers(0, 5, 8_000)).astype(np.uint16)
    val = ((np.arange(1_000) * 5) % 113).astype(np.uint16)
    return Job(DocRows([stream], 16), DocRows([val], 16), out / name, out / f"{name}_live",
               token_bytes=np.ones(128, dtype=np.int64), data_fingerprint="dist", desc="pretrain")


def run_name(mode: str, optimizer: str, moe: bool = False, global_: bool = False) -> str:
    return f"{mode}-{optimizer}" + ("-moe" if moe else "") + ("-global" if global_ else "")


def main() -> None:
    out, batch_size, *runs = sys.argv[1:]
    for run in runs:
        mode, optimizer, *rest = run.split(":")
        moe, global_ = "moe" in rest, "global" in rest
        kw = dict(activation_checkpointing="full") if moe else {}
        if global_:
            kw.update(GLOBAL)
        train(model_config(moe), train_config(optimizer, int(batch_size), **kw), ParallelConfig(mode=mode),
              job(Path(out), run_name(mode, optimizer, moe, global_)))
    distributed.teardown()


if __name__ == "__main__":
    main()
