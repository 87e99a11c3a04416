"""Dry run: what a training stage would do, and what it would cost, without writing anything.

`python -m stages.pretrain --dry-run` (or `LLM_CORE_DRY_RUN=1`) resolves the params, builds the model on the meta
device (no memory, any size), and prints at once parameters, FLOPs per token, tokens per step, steps, epochs over
the data (with the stage's own warning when they are too many) and an estimate of the memory (weights, gradients,
optimizer state, activations at the batch size). Then it times real steps on this machine in a throw-away folder,
with a progress line (a big model on a CPU takes minutes), and prints the estimated run time. It exits with status
3 so that `LLM_CORE_DRY_RUN=1 dvc repro pretrain` records nothing in dvc.lock.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from llm_core import distributed
from llm_core.config import ModelConfig, ParallelConfig, TrainConfig
from llm_core.model.transformer import Transformer
from llm_core.training.loop import Job, Trainer, epoch_warning, resolve_precision

DRY_RUN_ENV = "LLM_CORE_DRY_RUN"
EXIT_STATUS = 3  # not 0: DVC must not take the untouched outputs as this stage's result
TIMED_STEPS = 3


def requested(flag: bool) -> bool:
    return flag or os.environ.get(DRY_RUN_ENV, "") not in ("", "0")


def _gib(n: float) -> str:
    return f"{n / 2**30:.3f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def memory_estimate(model_cfg: ModelConfig, cfg: TrainConfig, model: Transformer, bytes_per_act: int) -> dict:
    """Bytes per process for a step without sharding: fp32 weights and gradients, the optimizer's state (AdamW:
    two moments; Muon: one momentum buffer on the hidden matrices), and the activations autograd saves. Activations
    per token and layer: the block's inputs and norms, q/k/v and the attention output, and three SwiGLU widths;
    the attention matrix itself is not kept (flash / SDPA recompute it), then the logits and their softmax."""
    hidden = sum(p.numel() for n, p in model.named_parameters() if p.ndim >= 2 and "tok_emb" not in n
                 and "lm_head" not in n)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    optim_floats = (2 * (total - hidden) + hidden) if cfg.optimizer == "muon" else 2 * total
    d, kv = model_cfg.d_model, model_cfg.n_kv_heads * model_cfg.head_dim
    per_token_layer = 6 * d + 2 * kv + 3 * model_cfg.ffn_hidden
    tokens = cfg.batch_size * cfg.seq_len
    acts = tokens * (model_cfg.n_layers * per_token_layer * bytes_per_act + 2 * model_cfg.vocab_size * 4)
    return {"weights": 4 * total, "gradients": 4 * total, "optimizer": 4 * optim_floats, "activations": acts}


def plan_lines(model_cfg: ModelConfig, cfg: TrainConfig, parallel: ParallelConfig, job: Job, desc: str) -> list[str]:
    """The plan, computed without running anything: the model is built on the meta device (any size, no memory)."""
    with torch.device("meta"):
        meta = Transformer(model_cfg)
    params = meta.num_params()
    world, accum, tokens_per_step = _step_size(cfg, parallel, desc)
    amp = resolve_precision(cfg, _device())
    mem = memory_estimate(model_cfg, cfg, meta, 2 if amp is not None else 4)
    rows = len(job.train_rows)
    epochs = cfg.steps * cfg.batch_size * accum * world / rows
    lines = [
        f"{desc} dry run (nothing is written)",
        f"  model            {model_cfg.family or model_cfg.preset} {model_cfg.n_layers}x{model_cfg.d_model}, "
        f"{model_cfg.n_heads} heads "
        f"({model_cfg.n_kv_heads} kv), vocab {model_cfg.vocab_size}: {params:,} parameters",
        f"  FLOPs per token  {model_cfg.flops_per_token(cfg.seq_len):,.0f} (training, 6N + attention)",
        f"  tokens per step  {tokens_per_step:,} = {cfg.batch_size} x {cfg.seq_len} x {accum} accum x {world} ranks",
        f"  steps            {cfg.steps:,} -> {cfg.steps * tokens_per_step:,} tokens, {epochs:.2f} epochs of the "
        f"training split ({rows:,} rows)",
        "  memory per rank  " + ", ".join(f"{k} {_gib(v)}" for k, v in mem.items())
        + f"; total {_gib(sum(mem.values()))} (estimate"
        + (f"; {parallel.mode} shards part of it)" if parallel.mode in ("zero1", "fsdp") else ")"),
    ]
    val_rows = len(job.val_rows) if job.val_rows is not None else 0
    warning = epoch_warning(desc, epochs, cfg.final == "best" and val_rows >= cfg.batch_size * world)
    return lines + ([warning] if warning else [])


def _step_size(cfg: TrainConfig, parallel: ParallelConfig, desc: str) -> tuple[int, int, int]:
    """Ranks the params launch, micro-batches per step, tokens per optimizer step."""
    world = distributed.world_size(parallel)
    accum = cfg.accum_steps(world, desc)
    return world, accum, cfg.batch_size * cfg.seq_len * accum * world


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _Progress:
    """One line that says what the timing is doing: rewritten in place on a terminal, one line per update in a
    log (a pipe or a file, where carriage returns would pile up)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()

    def show(self, text: str) -> None:
        line = f"  timing           {text}"
        self.stream.write(f"\r{line}\x1b[K" if self.tty else line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def time_steps(model_cfg: ModelConfig, cfg: TrainConfig, parallel: ParallelConfig, job: Job, desc: str,
               progress: _Progress) -> float:
    """Seconds per optimizer step of one rank on this machine: the real loop on the real rows, in a throw-away
    folder, one warm-up step (allocations, first-call costs) then TIMED_STEPS timed ones. The process runs one
    rank's share of a step (its micro-batches), whatever the rank count."""
    device = _device()
    accum = _step_size(cfg, parallel, desc)[1]
    with tempfile.TemporaryDirectory(prefix="dry-run-") as tmp:
        timed = replace(cfg, steps=TIMED_STEPS + 1, eval_every=10**9, checkpoint_every=10**9, grad_accum=accum,
                        global_batch_tokens=0,
                        compile=False if cfg.compile == "auto" and device.type == "cpu" else cfg.compile)
        trial = Job(job.train_rows, None, Path(tmp) / "out", None, token_bytes=job.token_bytes,
                    init_from=job.init_from, data_fingerprint="dry-run", desc=desc)
        total = TIMED_STEPS + 1
        progress.show(f"building the model and optimizer on {device.type} ...")
        trainer = Trainer(model_cfg, timed, parallel, trial, quiet=True)
        progress.show(f"step 1 of {total} (warm-up) ...")
        t0 = time.perf_counter()
        trainer.train_step()
        warm_up, spent = time.perf_counter() - t0, []
        for i in range(TIMED_STEPS):
            so_far = f"{sum(spent) / len(spent):.3f} s/step so far" if spent else f"warm-up took {warm_up:.2f} s"
            progress.show(f"step {i + 2} of {total} ... ({so_far})")
            t0 = time.perf_counter()
            trainer.train_step()
            spent.append(time.perf_counter() - t0)
        trainer.tracker.close()
    progress.done()
    return sum(spent) / len(spent)


def dry_run(model_cfg: ModelConfig, cfg: TrainConfig, parallel: ParallelConfig, job: Job, desc: str) -> None:
    """Print the plan at once, then time real steps (a progress line while they run) and print the estimate."""
    print("\n".join(plan_lines(model_cfg, cfg, parallel, job, desc)), flush=True)
    per_step = time_steps(model_cfg, cfg, parallel, job, desc, _Progress())
    world, _, tokens_per_step = _step_size(cfg, parallel, desc)
    print(f"  time             {per_step:.3f} s/step on {_device().type} ({tokens_per_step / per_step:,.0f} "
          f"tokens/s) -> about {cfg.steps * per_step / 60:.1f} min for {cfg.steps:,} steps "
          f"(validation and checkpoints extra{'; timed on one rank, communication extra' if world > 1 else ''})",
          flush=True)
