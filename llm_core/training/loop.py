"""THE training loop, shared by pretraining and SFT in every parallel mode.

Pretraining and SFT differ only in their rows (token windows vs packed chats with masked targets) and in where the
weights start; parallelism is a wrapping choice made in `distributed.wrap`. The loop is one `Trainer` in named parts,
as torchtitan's: set-up and resume (`__init__`), `forward_backward` (one micro-batch), `train_step` (one optimizer
step), `evaluate`, `save`, and `train` (the loop itself).

A run resumes from its newest complete checkpoint when the checkpoint's fingerprint (model + training config + data +
starting weights) equals this run's; otherwise it starts fresh, so editing params never silently continues an
unrelated run. The best-by-validation weights are kept in `best/`; `final: best` makes them the stage's output.
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

from llm_core import distributed
from llm_core.config import ModelConfig, ParallelConfig, TrainConfig, fingerprint
from llm_core.data.loader import IGNORE, Loader, Rows
from llm_core.errors import UserError
from llm_core.evaluation import hellaswag
from llm_core.evaluation.metrics import TokenMetrics, loss_fn
from llm_core.files import write_json
from llm_core.model.io import load_model, weights_hash, write_weights
from llm_core.model.transformer import Transformer
from llm_core.training import checkpoint, optim
from llm_core.training.recompute import apply_activation_checkpointing
from llm_core.training.tracking import Throughput, Tracker, device_info, peak_flops

EPOCH_WARNING = 4.0  # planned passes over the training split past which overfitting is likely
# bookkeeping of a run: kept in the model folder's train_info.json, left out of the metrics people compare
COUNTERS = ("steps", "tokens", "skipped_steps", "final")
# a run's result["runtime"]: throughput, wall time by phase, date and device. They differ from run to run, so they
# go to the stage's run-info file only, never into a file DVC hashes (models/, metrics): dvc.lock stays a pure
# function of code, params and data, and a reproduction is read off it
RUNTIME = "runtime"


def epoch_warning(desc: str, epochs: float, keeps_best: bool) -> str | None:
    """What a run that repeats its data too often is told (by the stage, and before it by the dry run)."""
    if epochs <= EPOCH_WARNING:
        return None
    return (f"{desc}: warning: the run repeats its training data {epochs:.1f} times; expect overfitting. "
            f"Add data or lower {desc}.steps" + (f"; the best-by-validation weights are kept ({desc}.final: best)"
                                                 if keeps_best else ""))


def compared(result: dict) -> dict:
    """The figures of a run's result that belong in its metrics file."""
    return {k: v for k, v in result.items() if k not in COUNTERS and k != RUNTIME}


class NonFiniteError(UserError, RuntimeError):
    pass


def forward_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                 docs: torch.Tensor | None) -> torch.Tensor:
    """A micro-batch's loss summed over its target tokens. The loop compiles this whole function, so forward, head
    and fp32 cross-entropy are one graph: the fp32 copy of the logits is fused into the loss, never materialised."""
    return loss_fn(model(x, docs=docs), y, reduction="sum")


def expert_load_metrics(counts: list[float], layers: list[int]) -> dict:
    """Max / mean tokens per expert of each MoE layer (1.0 = perfectly balanced), from the flattened counts."""
    width = len(counts) // len(layers)
    out = {}
    for row, layer in enumerate(layers):
        load = [c for c in counts[row * width:(row + 1) * width]]
        mean = sum(load) / len(load)
        out[f"moe/load_max_mean_layer{layer}"] = max(load) / mean if mean > 0 else 1.0
    out["moe/load_max_mean"] = sum(out.values()) / len(layers)
    return out


@dataclass
class Job:
    """Everything one training run needs besides the configs."""

    train_rows: Rows
    val_rows: Rows | None
    out_dir: Path  # checkpoints/, best/ and the final model go here
    live_dir: Path | None  # dvclive folder (curves)
    token_bytes: np.ndarray | None = None  # bytes per token id, for bits-per-byte
    init_from: Path | None = None  # start from these weights (SFT starts from the pretrained model)
    data_fingerprint: str = ""
    desc: str = "train"
    hellaswag: list[dict] | None = None  # items scored during training (a curve), with `tokenizer`
    hellaswag_every: int = 0
    tokenizer: object = None
    bos_id: int | None = None  # rows are packed documents, each opened by this token (the document mask's bounds)
    chat: bool = False  # rows are chats in the template: every model folder written says so (llm-chat reads it)


def resolve_precision(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    choice = cfg.precision
    if choice == "auto":
        choice = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]


def resolve_compile(choice: str | bool, device: torch.device) -> bool:
    """Whether to torch.compile the model: `auto` compiles on CUDA and stays eager on the CPU, where compiling the
    small models that train there costs more time than it saves (bench/RESULTS.md, "Training engine")."""
    return choice is True or (choice == "auto" and device.type == "cuda")


class Trainer:
    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig, parallel: ParallelConfig, job: Job,
                 quiet: bool = False):
        self.model_cfg, self.cfg, self.job = model_cfg, cfg, job
        self.ctx = ctx = distributed.setup(parallel.backend)
        if cfg.threads != "auto":
            torch.set_num_threads(int(cfg.threads))
        if cfg.seq_len > model_cfg.max_seq_len:
            raise ValueError(f"params.yaml: {job.desc}.seq_len ({cfg.seq_len}) exceeds model.max_seq_len "
                             f"({model_cfg.max_seq_len}); lower it or raise model.max_seq_len")
        self.accum = cfg.accum_steps(ctx.world, job.desc)
        self.mode = parallel.mode if ctx.distributed else "none"
        self.device = ctx.device
        self.amp_dtype = resolve_precision(cfg, self.device)
        self.ckpt_root = job.out_dir / "checkpoints"
        self.best_dir = job.out_dir / "best"
        self.model_info = {"chat": job.chat, "stage": job.desc}  # model_info.json of every folder this run writes
        # what decides the trajectory: a checkpoint of another config / data / start / rank count is never continued
        init_hash = weights_hash(job.init_from) if job.init_from is not None else ""
        trajectory = {k: v for k, v in asdict(cfg).items() if k not in ("threads", "peak_flops")}
        self.run_id = fingerprint(model_cfg, trajectory, job.data_fingerprint, init_hash, self.mode, ctx.world,
                                  self.accum)
        self.train_loader = Loader(job.train_rows, cfg.batch_size, ctx.rank, ctx.world, seed=cfg.seed)

        # every rank starts from the same weights: the same seed, then (SFT) the same file
        torch.manual_seed(cfg.seed)
        model = Transformer(model_cfg)
        if job.init_from is not None:
            model.load_state_dict(load_model(job.init_from, attention=model_cfg.attention).state_dict())
        saved = self._resume_point()
        self.state = {"step": 0, "tokens": 0, "skipped_steps": 0, "best": None, "evals_since_best": 0}
        if saved is not None:
            model.load_state_dict(saved["weights"])
            self.state.update(saved["state"])
            self.train_loader.load_state_dict(self.state["loader"])
        self.start_step, self.start_tokens = self.state["step"], self.state["tokens"]
        self.num_params = model.num_params()
        model.to(self.device)
        self.model = model
        self.moe_layers = [i for i, _ in model.moe_layers()]
        # expert load summed over the steps since the last validation: one step's counts are too few to judge balance
        self.load_window: list[float] | None = None
        self.last_load: dict = {}
        if cfg.activation_checkpointing != "none":  # before wrapping: DDP / FSDP / compile see the recomputing blocks
            apply_activation_checkpointing(model, cfg.activation_checkpointing, cfg.activation_checkpointing_k)
        self.step_model = distributed.wrap(model, self.mode, ctx, self.amp_dtype)
        # built after wrapping: FSDP swaps the parameters for sharded ones
        self.optimizers = optim.build_optimizers(model, cfg, self.device.type,
                                                 shard=distributed.shards_optimizer(self.mode, ctx))
        # fp16 needs loss scaling or small gradients underflow to zero; bf16 has fp32's range and needs none
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if saved is not None:
            distributed.load_optimizer_states(model, self.optimizers, saved["optimizers"], ctx)
            checkpoint.restore_rng(saved["rng"])
            if saved.get("scaler"):
                self.scaler.load_state_dict(saved["scaler"])
        self.forward_loss = forward_loss
        if resolve_compile(cfg.compile, self.device):
            self.step_model = torch.compile(self.step_model)  # validation's forward
            self.forward_loss = torch.compile(forward_loss)  # training's forward and loss (it inlines step_model)
        self.autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                         else contextlib.nullcontext())
        # a validation set of whole rows over all ranks (cfg.eval_rows()): its figures do not depend on the rank count
        self.val_loader = (Loader(job.val_rows, cfg.batch_size, ctx.rank, ctx.world, shuffle=False)
                           if job.val_rows is not None and len(job.val_rows) > 0 else None)
        self.token_bytes = (torch.tensor(job.token_bytes, device=self.device) if job.token_bytes is not None
                            else None)
        self.tokens_per_step = cfg.batch_size * cfg.seq_len * self.accum * ctx.world
        self.peak = peak_flops(self.device, cfg.peak_flops)
        self.meter = Throughput(model_cfg.flops_per_token(cfg.seq_len), self.peak, ctx.world)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.final = cfg.final if self.val_loader is not None else "last"
        if ctx.is_main and not quiet:
            self._announce(saved is not None)
        self.tracker = Tracker(job.live_dir, ctx.is_main and not quiet, resume=self.start_step > 0, total=cfg.steps,
                               start=self.start_step, desc=job.desc)

    # ---------------------------------------------------------------------------------------------------------------
    # set-up

    def _resume_point(self) -> dict | None:
        """The newest checkpoint of this very run, if it has not finished; rank 0 decides for all."""
        latest = checkpoint.latest_checkpoint(self.ckpt_root) if self.ctx.is_main else None
        if latest is not None:
            saved = checkpoint.read_state(latest)
            finished = saved["step"] >= self.cfg.steps or saved.get("stopped_early")
            if saved.get("fingerprint") != self.run_id or finished:
                # another config's checkpoints, or a finished run: this run starts over (and so does its best)
                shutil.rmtree(self.ckpt_root)
                shutil.rmtree(self.best_dir, ignore_errors=True)
                latest = None
        if latest is None and self.ctx.is_main:
            shutil.rmtree(self.best_dir, ignore_errors=True)
        latest = distributed.broadcast_object(latest, self.ctx)
        return checkpoint.load_checkpoint(latest) if latest is not None else None

    def _announce(self, resumed: bool) -> None:
        cfg, desc = self.cfg, self.job.desc
        rows_per_step = cfg.batch_size * self.accum * self.ctx.world
        epochs = cfg.steps * rows_per_step / len(self.job.train_rows)
        print(f"{desc}: model: {self.model_cfg.summary()}", flush=True)
        print(f"{desc}: {self.num_params:,} parameters, {cfg.steps} steps x {self.tokens_per_step:,} tokens = "
              f"{cfg.steps * self.tokens_per_step:,} tokens, {epochs:.2f} epochs of the training split "
              f"({len(self.job.train_rows):,} rows of {cfg.seq_len})", flush=True)
        warning = epoch_warning(desc, epochs, self.final == "best")
        if warning:
            print(warning, flush=True)
        if resumed:
            print(f"{desc}: resuming from step {self.state['step']} of {cfg.steps}", flush=True)

    # ---------------------------------------------------------------------------------------------------------------
    # one step

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, sync: bool) -> torch.Tensor:
        """One micro-batch: the summed loss over its target tokens (detached); backward of sum * scale."""
        sm = self.step_model
        if hasattr(sm, "set_requires_gradient_sync"):  # FSDP2
            sm.set_requires_gradient_sync(sync)
        # all-reduce / reduce-scatter gradients only on the last micro-batch of the step
        no_sync = sm.no_sync() if not sync and hasattr(sm, "no_sync") else contextlib.nullcontext()
        with no_sync, self.autocast:
            loss_sum = self.forward_loss(sm, x, y, self.docs(x))
            objective = loss_sum * scale
            aux = self.model.take_aux_loss() if self.moe_layers else None
            if aux is not None:
                # a mean per micro-batch: averaged over the step's micro-batches here and over ranks by DDP / FSDP
                objective = objective + aux / self.accum
        self.scaler.scale(objective).backward()
        return loss_sum.detach()

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A batch tensor on the training device; on CUDA through pinned memory, so the copy is truly asynchronous
        (a non_blocking copy from pageable memory waits for the GPU)."""
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def docs(self, x: torch.Tensor) -> torch.Tensor | None:
        """Document index of every position of packed rows (each <|bos|> opens the next), for the model's document
        mask; None when rows are not packed documents or `doc_mask` is off."""
        if self.job.bos_id is None or not self.cfg.doc_mask:
            return None
        return (x == self.job.bos_id).cumsum(dim=1)

    def train_step(self) -> dict:
        """One optimizer step over `accum` micro-batches on every rank."""
        cfg, ctx, state = self.cfg, self.ctx, self.state
        step = state["step"]
        lr = optim.set_lr(self.optimizers, optim.lr_factor(step, cfg))
        batches = [[self.to_device(t) for t in self.train_loader.next_batch()] for _ in range(self.accum)]
        # the loss is the mean over every target token of the global batch (SFT rows hold different numbers of
        # them); DDP/FSDP average gradients over ranks, so each rank scales its sum by world / global count.
        # Counted on the device: the scale is a tensor, and nothing waits for the GPU before the backward passes
        count = torch.stack([(y != IGNORE).sum() for _, y in batches]).sum().double()
        global_count = distributed.all_reduce_sum(count.clone(), ctx)
        scale = (ctx.world / global_count.clamp(min=1)).float()
        loss_sum = torch.zeros((), device=self.device)
        for micro, (x, y) in enumerate(batches):
            loss_sum += self.forward_backward(x, y, scale, sync=micro == self.accum - 1)
        for opt in self.optimizers:
            self.scaler.unscale_(opt)
        grad_norm = distributed.clip_grad_norm(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        # float64: exact token counts however large the batch
        check = torch.stack([loss_sum.double(), grad_norm.double() / ctx.world, count])
        load = self.model.take_expert_load() if self.moe_layers else None  # (MoE layers, experts) token counts
        if load is not None:
            check = torch.cat([check, load.flatten().to(check)])
        distributed.all_reduce_sum(check, ctx)  # every rank sees the same verdict (and the load of all ranks)
        # the step's only host sync: one transfer for the loss, the norm, the non-finite verdict and the loads
        loss_total, norm, tokens, *counts = check.tolist()
        train_loss = loss_total / max(tokens, 1.0)
        if math.isfinite(train_loss) and math.isfinite(norm):
            for opt in self.optimizers:
                self.scaler.step(opt)
            self.scaler.update()
            if load is not None:  # auxiliary-loss-free balancing: one bias step per optimizer step, same on all ranks
                self.model.update_expert_bias(check[3:].view_as(load).to(load.dtype))
        elif self.scaler.is_enabled() and math.isfinite(train_loss):
            # fp16 overflow: skip the step and lower the scale on every rank alike (GradScaler's own rule)
            self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())
            state["skipped_steps"] += 1
        elif cfg.on_nonfinite == "halt":
            self.tracker.close()
            raise NonFiniteError(
                f"{self.job.desc}: non-finite loss or grad norm at step {step}; stopped. The last good checkpoint is "
                f"kept in {self.ckpt_root}. Lower {self.job.desc}.lr, raise warmup, or set "
                f"{self.job.desc}.on_nonfinite: skip (`dvc checkout {self.job.out_dir}` brings back the folder of the "
                "last recorded run)")
        else:
            state["skipped_steps"] += 1
            if self.scaler.is_enabled():
                self.scaler.update(self.scaler.get_scale())
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        state["step"] = step + 1
        state["tokens"] += self.tokens_per_step
        self.meter.add(self.tokens_per_step)
        out = {"train/loss": train_loss, "train/lr": lr, "train/grad_norm": norm,
               **{f"train/{k}": v for k, v in self.meter.read().items()}}
        if load is not None:
            out.update(expert_load_metrics(counts, self.moe_layers))
            self.load_window = counts if self.load_window is None else [a + b for a, b in zip(self.load_window, counts)]
        return out

    # ---------------------------------------------------------------------------------------------------------------
    # validation, best weights, checkpoints

    def evaluate(self) -> dict:
        """Loss, perplexity, token accuracy and bits per byte on the same validation rows at every call."""
        if self.val_loader is None:
            return {}
        self.step_model.eval()
        metrics = TokenMetrics(self.device, self.token_bytes)
        with torch.no_grad(), self.autocast:
            for x, y in self.val_loader.eval_batches(self.cfg.eval_rows()):
                x, y = x.to(self.device), y.to(self.device)
                metrics.add(self.step_model(x, docs=self.docs(x)), y)
        distributed.all_reduce_sum(metrics.sums, self.ctx)
        self.step_model.train()
        return {f"val/{k}": v for k, v in metrics.result().items()}

    def evaluate_hellaswag(self) -> dict:
        """The HellaSwag subset's three accuracies. Every rank scores all of it (the same forwards on every rank,
        so FSDP's collectives line up); it is small."""
        with torch.no_grad(), self.autocast:
            res = hellaswag.score_items(self.model, self.job.hellaswag, self.job.tokenizer)
        return {f"val/hellaswag_{k}": v for k, v in res.items() if k != "num_items"}

    def update_best(self, val: dict) -> None:
        """Keep the weights of the best validation loss so far in best/ (written atomically, rank 0)."""
        if "val/loss" not in val:
            return
        best = self.state["best"]
        if best is not None and not val["val/loss"] < best["metrics"]["val/loss"]:
            self.state["evals_since_best"] += 1
            return
        self.state["best"] = {"step": self.state["step"], "metrics": val}
        self.state["evals_since_best"] = 0
        weights = distributed.model_state(self.model, self.ctx)  # a collective under FSDP
        if self.ctx.is_main:
            tmp = self.job.out_dir / ".best.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            write_weights(tmp, self.model_cfg, weights, self.model_info)
            write_json(tmp / "best.json", self.state["best"])
            shutil.rmtree(self.best_dir, ignore_errors=True)
            tmp.rename(self.best_dir)

    def save(self, step: int) -> None:
        self.state["fingerprint"] = self.run_id
        self.state["loader"] = self.train_loader.state_dict()
        # collectives (FSDP gathers shards, ZeRO consolidates onto rank 0): every rank takes part, rank 0 writes
        weights = distributed.model_state(self.model, self.ctx)
        optim_states = distributed.optimizer_states(self.model, self.optimizers, self.ctx)
        if self.ctx.is_main:
            checkpoint.save_checkpoint(self.ckpt_root, step, self.model_cfg, weights, optim_states, self.state,
                                       self.cfg.keep_checkpoints,
                                       scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
                                       info=self.model_info)
        distributed.barrier(self.ctx)
        checkpoint.fault_point("after_checkpoint", step)

    # ---------------------------------------------------------------------------------------------------------------
    # the loop

    def train(self) -> dict:
        cfg, state = self.cfg, self.state
        last_train_loss, last_val = float("nan"), {}
        stopped_early = False
        t_start = time.perf_counter()
        if cfg.steps == 0:  # import only: the metrics describe the imported weights on this data
            last_val = self.evaluate()
        self.step_model.train()
        while state["step"] < cfg.steps:
            metrics = self.train_step()
            last_train_loss = metrics["train/loss"]
            step = state["step"]
            if step % cfg.eval_every == 0 or step == cfg.steps:
                if self.load_window is not None:
                    self.last_load = expert_load_metrics(self.load_window, self.moe_layers)
                    self.load_window = None
                with self.meter.phase("val"):
                    last_val = self.evaluate()
                metrics.update(last_val)
                with self.meter.phase("checkpoint"):
                    self.update_best(last_val)
            if self.job.hellaswag and self.job.hellaswag_every and (step % self.job.hellaswag_every == 0
                                                                     or step == cfg.steps):
                with self.meter.phase("hellaswag"):
                    metrics.update(self.evaluate_hellaswag())
            self.tracker.log(step, metrics)
            self.tracker.progress(1, loss=last_train_loss, lr=metrics["train/lr"])
            patience = cfg.early_stop_patience
            stopped_early = bool(patience and state["evals_since_best"] >= patience and step < cfg.steps)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopped_early:
                state["stopped_early"] = stopped_early  # an early-stopped run is finished: never resumed
                with self.meter.phase("checkpoint"):
                    self.save(step)
            if stopped_early:
                if self.ctx.is_main:
                    print(f"{self.job.desc}: stopping early at step {step}: validation loss has not improved for "
                          f"{patience} passes (best at step {state['best']['step']})", flush=True)
                break
        return self._finish(time.perf_counter() - t_start, last_train_loss, last_val, stopped_early)

    def _finish(self, elapsed: float, train_loss: float, last_val: dict, stopped_early: bool) -> dict:
        state, ctx = self.state, self.ctx
        best = state["best"]
        use_best = self.final == "best" and best is not None
        val = best["metrics"] if use_best else last_val  # the metrics describe the model the stage outputs
        result = {"train_loss": train_loss}
        for key, value in val.items():
            result["val_" + key.split("/", 1)[1]] = value
        result.update({"steps": state["step"], "tokens": state["tokens"], "skipped_steps": state["skipped_steps"],
                       "num_params": self.num_params, "num_params_active": self.model_cfg.num_params(active=True),
                       "kv_cache_bytes_per_token": self.model_cfg.kv_cache_bytes_per_token(),
                       "final": "best" if use_best else "last",
                       "stopped_early": stopped_early})
        if best is not None:
            result["best_step"] = best["step"]
        # expert balance over the last validation interval: max / mean tokens per expert, per MoE layer and averaged
        result.update({k.replace("moe/", "moe_"): v for k, v in self.last_load.items()})
        phases = {f"{k}_seconds": v for k, v in sorted(self.meter.phase_seconds.items())}
        runtime = {"train_seconds": elapsed - sum(phases.values()), **phases,
                   **device_info(self.device, ctx.world)}
        if runtime["train_seconds"] > 0 and state["tokens"] > self.start_tokens:
            # the training steps' time only: validation, probe and checkpoint time are reported apart above
            runtime["tokens_per_sec"] = (state["tokens"] - self.start_tokens) / runtime["train_seconds"]
            if self.peak:
                runtime["mfu"] = (self.model_cfg.flops_per_token(self.cfg.seq_len) * runtime["tokens_per_sec"]
                                  / (self.peak * ctx.world))
        # the best weights are already on disk; gathering the live ones (a collective under FSDP) is for `last` only
        weights = None if use_best else distributed.model_state(self.model, ctx)
        if ctx.is_main:
            if use_best:
                weights = load_model(self.best_dir).state_dict()
            checkpoint.save_final(self.job.out_dir, self.model_cfg, weights, result, self.model_info)
        self.tracker.close()
        distributed.barrier(ctx)
        return {**result, RUNTIME: runtime}


def train(model_cfg: ModelConfig, cfg: TrainConfig, parallel: ParallelConfig, job: Job) -> dict:
    return Trainer(model_cfg, cfg, parallel, job).train()
