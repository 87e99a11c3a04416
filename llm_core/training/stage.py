"""The skeleton every training stage shares (stages/pretrain.py, stages/sft.py), as torchtitan's `train.py`:

    arguments -> params -> relaunch under torchrun when params ask for workers -> tokenizer + shard manifest
    -> build the run (the stage's own part: rows, starting weights, model config) -> dry run? print the plan, exit 3
    -> train (the one loop) -> rank 0 writes the compared metrics (+ the stage's extras) and the run-info file
    -> teardown

A stage passes only what differs: its name and module, extra arguments, a `build` function and optional extra
metrics. The outputs (model folder, curves, metrics file) default to the dvc.yaml paths of a stage of that name.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llm_core import distributed, figures
from llm_core.config import ModelConfig, Params, TrainConfig, load_params
from llm_core.data import shards
from llm_core.data.loader import Rows
from llm_core.data.tokenizer import Tokenizer
from llm_core.files import write_metrics, write_run_info
from llm_core.training import plan
from llm_core.training.loop import RUNTIME, Job, compared, train


def arguments(name: str, description: str | None) -> argparse.ArgumentParser:
    """The arguments every training stage takes; the stage adds its own before parsing."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--tokens", default=f"data/tokens/{name}", help="token shards to train on")
    ap.add_argument("--tokenizer", default="models/tokenizer")
    ap.add_argument("--out", default=f"models/{name}", help="the model folder (checkpoints/, best/, final weights)")
    ap.add_argument("--live", default=f"dvclive/{name}", help="dvclive folder for the curves")
    ap.add_argument("--metrics", default=f"metrics/{name}.json")
    ap.add_argument("--runtime", default=f"metrics/runtime/{name}.json",
                    help="run-info file: throughput, time by phase, date (volatile: never hashed by DVC)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, memory and time estimates; write nothing")
    return ap


@dataclass
class Inputs:
    """What a stage's `build` receives: its arguments, the params, the tokenizer and the shards' manifest (already
    checked against the tokenizer)."""

    name: str
    args: argparse.Namespace
    params: Params
    tok: Tokenizer
    manifest: dict

    def job(self, train_rows: Rows, val_rows: Rows | None, **kw) -> Job:
        """A Job writing where the arguments say, with the tokenizer's byte table and the shards' fingerprint."""
        return Job(train_rows, val_rows, Path(self.args.out), Path(self.args.live), token_bytes=self.tok.token_bytes(),
                   bos_id=self.tok.bos_id, data_fingerprint=shards.data_fingerprint(self.manifest), desc=self.name,
                   **kw)


Build = Callable[[Inputs], tuple[ModelConfig, TrainConfig, Job]]
ExtraMetrics = Callable[[Inputs, Job, dict], dict]


def run(name: str, module: str, args: argparse.Namespace, build: Build, extra_metrics: ExtraMetrics | None = None,
        ) -> None:
    """One training stage from its parsed arguments to its metrics file; `module` is what torchrun relaunches."""
    params = load_params()
    if not plan.requested(args.dry_run):
        distributed.relaunch_if_needed(params.parallel, module)

    tok = Tokenizer.from_dir(args.tokenizer)
    inputs = Inputs(name, args, params, tok, shards.load_manifest(args.tokens, tok))
    model_cfg, cfg, job = build(inputs)
    if plan.requested(args.dry_run):
        plan.dry_run(model_cfg, cfg, params.parallel, job, name)
        sys.exit(plan.EXIT_STATUS)
    result = train(model_cfg, cfg, params.parallel, job)

    if distributed.is_main_process():
        metrics = compared(result)
        if extra_metrics is not None:
            metrics.update(extra_metrics(inputs, job, metrics))
        write_metrics(args.metrics, metrics)
        write_run_info(args.runtime, result[RUNTIME])
        for shown in (metrics, result[RUNTIME]):
            print(f"{name}: {figures.line(shown)}")
    distributed.teardown()
