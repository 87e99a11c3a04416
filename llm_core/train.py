"""THE training loop, shared by pretraining and SFT in every parallel mode.

Pretraining and SFT differ only in their rows (token windows vs packed chats with masked targets) and in where the
weights start; parallelism is a wrapping choice made in `distributed.wrap`. A run resumes from its newest complete
checkpoint when the checkpoint's fingerprint (model + training config + data) equals this run's; otherwise it starts
fresh, so editing params never silently continues an unrelated run.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llm_core import checkpoint, distributed, optim
from llm_core.config import ModelConfig, ParallelConfig, TrainConfig, fingerprint
from llm_core.loader import IGNORE, Loader, Rows
from llm_core.model import Transformer
from llm_core.tracking import Throughput, Tracker, peak_flops


class NonFiniteError(RuntimeError):
    pass


@dataclass
class Job:
    """Everything one training run needs besides the configs."""

    train_rows: Rows
    val_rows: Rows | None
    out_dir: Path  # checkpoints/ and the final model go here
    live_dir: Path | None  # dvclive folder (curves)
    token_bytes: np.ndarray | None = None  # bytes per token id, for bits-per-byte
    init_from: Path | None = None  # start from these weights (SFT starts from the pretrained model)
    data_fingerprint: str = ""
    desc: str = "train"


def resolve_precision(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    choice = cfg.precision
    if choice == "auto":
        choice = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    # logits in fp32 for the softmax: bf16 log-probs of a 50k vocab are too coarse
    flat = targets.reshape(-1)
    losses = F.cross_entropy(logits.float().view(-1, logits.size(-1)), flat, ignore_index=IGNORE,
                             reduction="none" if reduction == "none" else "sum")
    if reduction != "mean":
        return losses
    # a batch with no target token (all masked) contributes zero loss instead of 0/0 = NaN
    return losses / (flat != IGNORE).sum().clamp(min=1)


def train(model_cfg: ModelConfig, cfg: TrainConfig, parallel: ParallelConfig, job: Job) -> dict:
    ctx = distributed.setup(parallel.backend)
    if cfg.threads != "auto":
        torch.set_num_threads(int(cfg.threads))
    if cfg.seq_len > model_cfg.max_seq_len:
        raise ValueError(f"params.yaml: {job.desc}.seq_len ({cfg.seq_len}) exceeds model.max_seq_len "
                         f"({model_cfg.max_seq_len}); lower it or raise model.max_seq_len")
    accum = cfg.accum_steps(ctx.world, job.desc)
    mode = parallel.mode if ctx.distributed else "none"
    device = ctx.device
    amp_dtype = resolve_precision(cfg, device)
    ckpt_root = job.out_dir / "checkpoints"
    # what decides the trajectory: a checkpoint of another config / data / rank count is never continued
    run_id = fingerprint(model_cfg, {k: v for k, v in asdict(cfg).items() if k not in ("threads", "peak_flops")},
                         job.data_fingerprint, mode, ctx.world, accum)
    train_loader = Loader(job.train_rows, cfg.batch_size, ctx.rank, ctx.world, seed=cfg.seed)

    # every rank starts from the same weights: the same seed, then (SFT) the same file
    torch.manual_seed(cfg.seed)
    model = Transformer(model_cfg)
    if job.init_from is not None:
        model.load_state_dict(checkpoint.load_model(job.init_from, attention=model_cfg.attention).state_dict())

    # resume only a run with the same fingerprint that has not finished; rank 0 decides for all
    latest = checkpoint.latest_checkpoint(ckpt_root) if ctx.is_main else None
    if latest is not None:
        saved = checkpoint.read_state(latest)
        if saved.get("fingerprint") != run_id or saved["step"] >= cfg.steps:
            shutil.rmtree(ckpt_root)  # another config's checkpoints, or a finished run: this run starts over
            latest = None
    latest = distributed.broadcast_object(latest, ctx)
    saved = checkpoint.load_checkpoint(latest) if latest is not None else None
    state = {"step": 0, "tokens": 0, "skipped_steps": 0}
    if saved is not None:
        model.load_state_dict(saved["weights"])
        state = saved["state"]
        train_loader.load_state_dict(state["loader"])
        if ctx.is_main:
            print(f"{job.desc}: resuming from {latest} (step {state['step']} of {cfg.steps})", flush=True)
    start_step, start_tokens = state["step"], state["tokens"]

    num_params = model.num_params()
    model.to(device)
    step_model = distributed.wrap(model, mode, ctx)
    # built after wrapping: FSDP swaps the parameters for sharded ones
    optimizers = optim.build_optimizers(model, cfg, device.type, shard=distributed.shards_optimizer(mode, ctx))
    if saved is not None:
        distributed.load_optimizer_states(model, optimizers, saved["optimizers"], ctx)
        checkpoint.restore_rng(saved["rng"])
        del saved
    if cfg.compile is True or (cfg.compile == "auto" and device.type == "cuda"):
        step_model = torch.compile(step_model)
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    val_loader = (Loader(job.val_rows, cfg.batch_size, ctx.rank, ctx.world, shuffle=False)
                  if job.val_rows is not None and len(job.val_rows) >= cfg.batch_size * ctx.world else None)
    token_bytes = torch.tensor(job.token_bytes, device=device) if job.token_bytes is not None else None
    tokens_per_step = cfg.batch_size * cfg.seq_len * accum * ctx.world
    peak = peak_flops(device, cfg.peak_flops)
    meter = Throughput(model_cfg.flops_per_token(cfg.seq_len), peak, ctx.world)
    tracker = Tracker(job.live_dir, ctx.is_main, resume=start_step > 0, total=cfg.steps, start=start_step,
                      desc=job.desc)
    params = [p for p in model.parameters() if p.requires_grad]

    def evaluate() -> dict:
        if val_loader is None:
            return {}
        step_model.eval()
        sums = torch.zeros(3, device=device, dtype=torch.float64)  # nats, counted tokens, bytes
        with torch.no_grad(), autocast:
            for x, y in val_loader.eval_batches(cfg.eval_batches):
                x, y = x.to(device), y.to(device)
                losses = loss_fn(step_model(x), y, reduction="none")
                mask = y.reshape(-1) != IGNORE
                sums[0] += losses[mask].sum().double()
                sums[1] += mask.sum()
                if token_bytes is not None:
                    # special tokens stand for no text: they count neither bits nor bytes (nanochat's convention)
                    nb = token_bytes[y.reshape(-1).clamp(min=0)] * mask
                    sums[2] += nb.sum()
                    sums[0] -= losses[mask & (nb == 0)].sum().double()
        distributed.all_reduce_sum(sums, ctx)
        step_model.train()
        nats, count, nbytes = sums.tolist()
        out = {"val/loss": nats / max(count, 1.0)}
        if token_bytes is not None and nbytes > 0:
            out["val/bpb"] = nats / (math.log(2) * nbytes)
        return out

    def save(step: int) -> None:
        state["fingerprint"] = run_id
        state["loader"] = train_loader.state_dict()
        # collectives (FSDP gathers shards, ZeRO consolidates onto rank 0): every rank takes part, rank 0 writes
        weights = distributed.model_state(model, ctx)
        optim_states = distributed.optimizer_states(model, optimizers, ctx)
        if ctx.is_main:
            checkpoint.save_checkpoint(ckpt_root, step, model_cfg, weights, optim_states, state, cfg.keep_checkpoints)
        distributed.barrier(ctx)
        checkpoint.fault_point("after_checkpoint", step)

    last_train_loss = float("nan")
    last_val: dict = {}
    t_start = time.perf_counter()
    step_model.train()
    while state["step"] < cfg.steps:
        step = state["step"]
        lr = optim.set_lr(optimizers, optim.lr_factor(step, cfg))
        loss_sum = torch.zeros((), device=device)
        for micro in range(accum):
            x, y = train_loader.next_batch()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            # all-reduce / reduce-scatter gradients only on the last micro-batch of the step
            sync = micro == accum - 1
            if hasattr(step_model, "set_requires_gradient_sync"):  # FSDP2
                step_model.set_requires_gradient_sync(sync)
            with (step_model.no_sync() if not sync and hasattr(step_model, "no_sync") else contextlib.nullcontext()), \
                    autocast:
                loss = loss_fn(step_model(x), y)
            (loss / accum).backward()
            loss_sum += loss.detach()
        grad_norm = distributed.clip_grad_norm(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        check = torch.stack([loss_sum.float() / accum, grad_norm.float()])
        distributed.all_reduce_sum(check, ctx)  # every rank sees the same verdict
        # the step's only host sync: one transfer for the loss, the norm and the non-finite verdict
        train_loss, norm_sum = (v / ctx.world for v in check.tolist())
        if not (math.isfinite(train_loss) and math.isfinite(norm_sum)):
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            if cfg.on_nonfinite == "halt":
                tracker.close()
                raise NonFiniteError(
                    f"{job.desc}: non-finite loss or grad norm at step {step}; stopped. The last good checkpoint is "
                    f"kept in {ckpt_root}. Lower {job.desc}.lr, raise warmup, or set {job.desc}.on_nonfinite: skip")
            state["skipped_steps"] += 1
        else:
            for opt in optimizers:
                opt.step()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        state["step"] = step + 1
        state["tokens"] += tokens_per_step
        meter.add(tokens_per_step)

        last_train_loss = train_loss
        metrics = {"train/loss": train_loss, "train/lr": lr, "train/grad_norm": norm_sum,
                   **{f"train/{k}": v for k, v in meter.read().items()}}
        if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.steps:
            last_val = evaluate()
            metrics.update(last_val)
        tracker.log(state["step"], metrics)
        tracker.progress(1, loss=train_loss, lr=lr)
        if state["step"] % cfg.checkpoint_every == 0 or state["step"] == cfg.steps:
            save(state["step"])

    elapsed = time.perf_counter() - t_start
    result = {"train_loss": last_train_loss, "steps": state["step"], "tokens": state["tokens"],
              "skipped_steps": state["skipped_steps"], "num_params": num_params}
    if "val/loss" in last_val:
        result["val_loss"] = last_val["val/loss"]
    if "val/bpb" in last_val:
        result["val_bpb"] = last_val["val/bpb"]
    if elapsed > 0:
        result["tokens_per_sec"] = (state["tokens"] - start_tokens) / elapsed  # this process's work only
    if peak and "tokens_per_sec" in result:
        result["mfu"] = model_cfg.flops_per_token(cfg.seq_len) * result["tokens_per_sec"] / (peak * ctx.world)
    weights = distributed.model_state(model, ctx)
    if ctx.is_main:
        checkpoint.save_final(job.out_dir, model_cfg, weights, result)
    tracker.close()
    distributed.barrier(ctx)
    return result
