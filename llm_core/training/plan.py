"""Dry run: what a training stage would do, and what it would cost, without writing anything.

`python -m stages.pretrain --dry-run` (or `LLM_CORE_DRY_RUN=1`) resolves the params, builds the model on the meta
device (no memory, any size), and prints parameters, FLOPs per token, tokens per step, steps, epochs over the data,
an estimate of the memory (weights, gradients, optimizer state, activations at the batch size) and, after timing 3
real steps on this machine in a throw-away folder, the estimated run time. It exits with status 3 so that
`LLM_CORE_DRY_RUN=1 dvc repro pretrain` records nothing in dvc.lock.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from llm_core.config import ModelConfig, ParallelConfig, TrainConfig
from llm_core.model.transformer import Transformer

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


def report(model_cfg: ModelConfig, cfg: TrainConfig, parallel: ParallelConfig, job, desc: str) -> str:
    """The plan as text (the timing runs the real loop on the real rows in a temporary folder)."""
    from llm_core.training.loop import Job, Trainer, resolve_precision

    with torch.device("meta"):
        meta = Transformer(model_cfg)
    params = meta.num_params()
    world = 1 if parallel.mode == "none" else max(1, int(os.environ.get("WORLD_SIZE", "1")))
    accum = cfg.accum_steps(world, desc)
    tokens_per_step = cfg.batch_size * cfg.seq_len * accum * world
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = resolve_precision(cfg, device)
    mem = memory_estimate(model_cfg, cfg, meta, 2 if amp is not None else 4)
    rows = len(job.train_rows)
    epochs = cfg.steps * cfg.batch_size * accum * world / rows
    lines = [
        f"{desc} dry run (nothing is written)",
        f"  model            {model_cfg.preset} {model_cfg.n_layers}x{model_cfg.d_model}, {model_cfg.n_heads} heads "
        f"({model_cfg.n_kv_heads} kv), vocab {model_cfg.vocab_size}: {params:,} parameters",
        f"  FLOPs per token  {model_cfg.flops_per_token(cfg.seq_len):,.0f} (training, 6N + attention)",
        f"  tokens per step  {tokens_per_step:,} = {cfg.batch_size} x {cfg.seq_len} x {accum} accum x {world} ranks",
        f"  steps            {cfg.steps:,} -> {cfg.steps * tokens_per_step:,} tokens, {epochs:.2f} epochs of the "
        f"training split ({rows:,} rows)",
        "  memory per rank  " + ", ".join(f"{k} {_gib(v)}" for k, v in mem.items())
        + f"; total {_gib(sum(mem.values()))} (estimate"
        + (f"; {parallel.mode} shards part of it)" if parallel.mode in ("zero1", "fsdp") else ")"),
    ]
    with tempfile.TemporaryDirectory(prefix="dry-run-") as tmp:
        timed = replace(cfg, steps=TIMED_STEPS + 1, eval_every=10**9, checkpoint_every=10**9, compile=False
                        if cfg.compile == "auto" and device.type == "cpu" else cfg.compile)
        trial = Job(job.train_rows, None, Path(tmp) / "out", None, token_bytes=job.token_bytes,
                    init_from=job.init_from, data_fingerprint="dry-run", desc=desc)
        trainer = Trainer(model_cfg, timed, parallel, trial, quiet=True)
        trainer.train_step()  # warm-up (allocations, first-call costs)
        t0 = time.perf_counter()
        for _ in range(TIMED_STEPS):
            trainer.train_step()
        per_step = (time.perf_counter() - t0) / TIMED_STEPS
        trainer.tracker.close()
    lines.append(f"  time             {per_step:.3f} s/step on {device.type} ({tokens_per_step / per_step:,.0f} "
                 f"tokens/s) -> about {cfg.steps * per_step / 60:.1f} min for {cfg.steps:,} steps "
                 "(validation and checkpoints extra)")
    return "\n".join(lines)
