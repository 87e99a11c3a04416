"""Benchmark one training step of a preset: tokens/s and MFU, against a baseline measured in the same run.

A step is what the training loop does per micro-batch: forward, fp32 cross-entropy, backward, gradient clipping and
the optimizer update (`llm_core.training.optim`: Muon on hidden matrices and AdamW on the rest by default, or AdamW
alone), with bf16 autocast and torch.compile on CUDA. The baseline (`--baseline`):
- `hf` (default): transformers' LlamaForCausalLM of the same shape and weights (SDPA attention), run through the same
  step, precision and compile setting: the JSON's `ratio` is ours / Hugging Face;
- `eager`: our model without torch.compile (ratio = compiled / eager; needs --compile);
- `none`.

MFU = flops_per_token (6N + 12LDT, `ModelConfig.flops_per_token`) x tokens/s / peak bf16 FLOP/s, reported only where
the peak is known (`llm_core.training.tracking.PEAK_BF16_FLOPS`, or --peak-flops).

A roofline on any device: the same run also measures this machine's dense matrix multiply (square, `--peak-size`,
in the step's precision, on the same threads), interleaved with the timed steps so both see the same machine, and
reports each model's `fraction_of_matmul_peak` = achieved FLOP/s (by the 6N + 12LDT count) / that matmul FLOP/s.
On a shared machine each figure is the best of `--rounds` rounds.

    python bench/train_step.py                                   # 124m, bf16 + compile on a GPU; tiny on CPU
    python bench/train_step.py --preset 350m --batch-size 8 --attention triton
    python bench/train_step.py --preset tiny --threads 2         # CPU: the default run's step (16 x 256, Muon)

The last line of output is a JSON object. Record GPU numbers in bench/RESULTS.md with date and hardware.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time

import torch

from llm_core import export
from llm_core.config import PRESETS, ModelConfig, TrainConfig
from llm_core.evaluation.metrics import loss_fn
from llm_core.model.transformer import Transformer
from llm_core.training import optim
from llm_core.training.tracking import peak_flops

HAS_CUDA = torch.cuda.is_available()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), help="default 124m on CUDA, tiny on CPU")
    ap.add_argument("--steps", type=int, help="timed steps (default 20 on CUDA, 5 on CPU)")
    ap.add_argument("--warmup", type=int, help="untimed steps first, compile included (default 5 on CUDA, 1 on CPU)")
    ap.add_argument("--batch-size", type=int, help="sequences per step (default 16)")
    ap.add_argument("--seq-len", type=int, help="default the preset's max_seq_len on CUDA, 256 on CPU (the default "
                                                "run's rows)")
    ap.add_argument("--vocab", type=int, help="default 50304 (GPT-2's, padded to 128) on CUDA, 975 on CPU (the "
                                              "default run's trained tokenizer)")
    ap.add_argument("--precision", choices=["bf16", "fp32"], help="default bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--compile", choices=["auto", "true", "false"], default="auto", help="auto = on CUDA")
    ap.add_argument("--attention", choices=["sdpa", "triton", "naive"], default="sdpa")
    ap.add_argument("--baseline", choices=["hf", "eager", "none"], default="hf")
    ap.add_argument("--peak-flops", type=float, default=0.0, help="peak FLOP/s for MFU when the device is not known")
    ap.add_argument("--peak-size", type=int, default=1024, help="side of the square matmul of the roofline")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (steps, matmul); each figure is the best round")
    ap.add_argument("--optimizer", choices=["adamw", "muon"], default="muon",
                    help="muon (the pipeline's default): Muon on hidden matrices, AdamW on the rest")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    args = ap.parse_args(argv)
    args.preset = args.preset or ("124m" if HAS_CUDA else "tiny")
    args.steps = args.steps or (20 if HAS_CUDA else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if HAS_CUDA else 1)
    args.batch_size = args.batch_size or 16
    args.vocab = args.vocab or (50304 if HAS_CUDA else 975)
    args.precision = args.precision or ("bf16" if HAS_CUDA else "fp32")
    args.compile = HAS_CUDA if args.compile == "auto" else args.compile == "true"
    if args.baseline == "eager" and not args.compile:
        ap.error("--baseline eager compares against torch.compile: add --compile true")
    return args


def _hf_model(model: Transformer) -> torch.nn.Module:
    import transformers

    cfg = transformers.LlamaConfig(**export.hf_config(model.cfg), attn_implementation="sdpa")
    hf = transformers.LlamaForCausalLM(cfg)
    missing, unexpected = hf.load_state_dict(export.to_hf_state_dict(model), strict=False)
    assert not unexpected and all(m == "lm_head.weight" for m in missing), (missing, unexpected)
    return hf


def _step_fn(model: torch.nn.Module, compiled: bool, amp: torch.dtype | None, device: torch.device, is_hf: bool,
             optimizer: str = "adamw"):
    train_cfg = TrainConfig(lr=3e-4, weight_decay=0.1, optimizer=optimizer)
    opts = optim.build_optimizers(model, train_cfg, device.type)
    fwd = torch.compile(model) if compiled else model
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    params = [p for p in model.parameters() if p.requires_grad]

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast:
            logits = fwd(input_ids=x).logits if is_hf else fwd(x)
            loss = loss_fn(logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _measure(step, batches, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per step, averaged over `steps` after `warmup` untimed steps."""
    for i in range(warmup):
        step(*batches[i % len(batches)])
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        loss = step(*batches[i % len(batches)])
    loss.item()  # waits for the last step
    _sync(device)
    return (time.perf_counter() - start) / steps


def matmul_flops(n: int, dtype: torch.dtype, device: torch.device, repeats: int = 10) -> float:
    """FLOP/s of an (n x n) @ (n x n) matmul: the roofline a training step's FLOP/s is read against."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if HAS_CUDA else "cpu")
    if HAS_CUDA:
        torch.backends.cuda.matmul.allow_tf32 = True
    cfg = ModelConfig(preset=args.preset, attention=args.attention).resolved(args.vocab)
    seq = args.seq_len or (cfg.max_seq_len if HAS_CUDA else min(256, cfg.max_seq_len))
    amp = torch.bfloat16 if args.precision == "bf16" else None
    tokens_per_step = args.batch_size * seq
    peak = peak_flops(device, args.peak_flops)
    flops_per_token = cfg.flops_per_token(seq)
    device_name = torch.cuda.get_device_name() if HAS_CUDA else f"cpu ({platform.processor() or platform.machine()})"
    print(f"train step benchmark on {device_name}: preset {args.preset} ({cfg.num_params() / 1e6:.1f}M params, "
          f"vocab {args.vocab}), batch {args.batch_size} x seq {seq}, {args.precision}, compile={args.compile}, "
          f"attention={args.attention}, optimizer={args.optimizer}, {torch.get_num_threads()} threads")

    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, args.vocab, (args.batch_size, seq), generator=gen).to(device),
                torch.randint(0, args.vocab, (args.batch_size, seq), generator=gen).to(device)) for _ in range(4)]
    torch.manual_seed(0)
    model = Transformer(cfg).to(device)

    runs = {}
    candidates = [("ours", model, args.compile, False)]
    if args.baseline == "hf":
        candidates.append(("hf_llama", _hf_model(model).to(device), args.compile, True))
    elif args.baseline == "eager":
        candidates.append(("ours_eager", Transformer(cfg).to(device), False, False))
    steps = {name: _step_fn(m, compiled, amp, device, is_hf, args.optimizer)
             for name, m, compiled, is_hf in candidates}
    for name, step in steps.items():  # warm up (and compile) every model before any timing
        _measure(step, batches, args.warmup, 1, device)
    # rounds of (each model's steps, the matmul peak): a shared machine's slow moments hit both sides alike
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    peaks: list[float] = []
    mm_dtype = amp or torch.float32
    for _ in range(args.rounds):
        for name, step in steps.items():
            if HAS_CUDA:
                torch.cuda.reset_peak_memory_stats()
            seconds[name].append(_measure(step, batches, 0, args.steps, device))
        peaks.append(matmul_flops(args.peak_size, mm_dtype, device))
    matmul_peak = max(peaks)
    print(f"  matmul {args.peak_size}x{args.peak_size} {str(mm_dtype).removeprefix('torch.')}: "
          f"{matmul_peak / 1e9:.1f} GFLOP/s (best of {args.rounds})")
    for name, m, _, _ in candidates:
        sec = min(seconds[name])
        r = {"step_ms": round(sec * 1e3, 3), "tokens_per_sec": round(tokens_per_step / sec, 1),
             "flops_per_sec": round(flops_per_token * tokens_per_step / sec, 1),
             "fraction_of_matmul_peak": round(flops_per_token * tokens_per_step / sec / matmul_peak, 3)}
        if peak:
            r["mfu"] = round(flops_per_token * tokens_per_step / sec / peak, 4)
        if HAS_CUDA:
            r["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        runs[name] = r
        shown = ", ".join(f"{k}={v}" for k, v in r.items())
        print(f"  {name:<11} {shown}", flush=True)
        m.to("cpu")  # free the device for the next run
        if HAS_CUDA:
            torch.cuda.empty_cache()

    summary = {
        "benchmark": "train_step", "device": device_name, "torch": torch.__version__, "preset": args.preset,
        "num_params": cfg.num_params(), "vocab": args.vocab, "batch_size": args.batch_size, "seq_len": seq,
        "tokens_per_step": tokens_per_step, "precision": args.precision, "compile": args.compile,
        "attention": args.attention, "optimizer": args.optimizer, "threads": torch.get_num_threads(),
        "flops_per_token": flops_per_token, "peak_flops": peak or None,
        "matmul_peak_flops": round(matmul_peak, 1), "fraction_of_matmul_peak": runs["ours"]["fraction_of_matmul_peak"],
        **runs,
    }
    if len(runs) == 2:
        base = next(k for k in runs if k != "ours")
        summary["baseline"] = base
        summary["ratio"] = round(runs["ours"]["tokens_per_sec"] / runs[base]["tokens_per_sec"], 3)
        print(f"ours / {base}: {summary['ratio']:.3f}x tokens/s")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
