"""Decoding speed: our batched engine against `transformers` `generate` on the same exported weights, and our
aggregate tokens/s as the batch grows.

A model of a preset's shape (random weights, seed 0: speed does not depend on what a model learned) is exported to
a Hugging Face Llama folder with `llm_core.export`; `transformers` loads that folder and our side imports it back
with `export.import_hf`, so both decode from the very same tensors. Greedy decoding, no stop token: every row
produces exactly `--new-tokens` tokens after a random prompt of `--prompt-len` tokens. tokens/s = batch x new tokens
/ wall time of the whole call (prefill included, the way a caller sees it).

- ours: `llm_core.inference.engine.Engine`, the batched decoder of the `sample` stage, `llm-chat` and `llm-serve`;
  also, at batch 1, `generate()`, the one-sequence reference decoder;
- hf: `LlamaForCausalLM.generate(do_sample=False)` with its default dynamic cache and SDPA attention.

Both run eager (no torch.compile, no CUDA graphs) in bf16 on CUDA and fp32 on the CPU (`--threads` threads, 1 by
default). One round times every figure once, in turn, so a burst of load from other jobs hits them alike; each
figure is the best of `--repeats` rounds after an untimed warm-up. Each row's `tokens_agree` is the share of
positions where the two greedy outputs agree (1.0 in fp32; in bf16 a near tie may flip).

Two clocks: the figures (tokens/s, `ratio`) are wall time, what a caller sees. On the CPU every row also reports the
ratio in CPU time of this process (`ratio_cpu`, `time.process_time`): with one thread that is the time the work
held a core, so on a machine shared with other jobs it leaves out the time slices they took (on an idle machine the
two agree; with more threads the CPU-time ratio sums them and means little).

    python bench/decode.py                                   # tiny on CPU (targets: ratio_vs_hf >= 2 at batch 1,
                                                             #   >= 1.5 at batch 32); 124m on a GPU
    python bench/decode.py --preset 350m --batch-sizes 1 8 64 --new-tokens 256
    python bench/decode.py --smoke                           # vocab 512, 8 + 8 tokens, batch 1 and 2, 1 round

The last line of output is a JSON object: `ratio_vs_hf` (ours / hf at batch 1), `ratio_vs_hf_batch_<B>` (at the
largest batch), `batch_<B>_vs_1` (our aggregate tokens/s at the largest batch / at batch 1) and a row per batch size.
"""

from __future__ import annotations

import os
import sys

# run as a script, bench/ comes first on sys.path, where a sibling benchmark would shadow a stdlib module; the
# repository root is what the imports below need
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from llm_core import export  # noqa: E402
from llm_core.config import PRESETS, ModelConfig  # noqa: E402
from llm_core.inference.engine import Engine, Request, run_batch  # noqa: E402
from llm_core.inference.generate import SamplingParams, generate  # noqa: E402
from llm_core.model.transformer import Transformer  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), help="default 124m on CUDA, tiny on CPU")
    ap.add_argument("--vocab", type=int, help="default 50304 on CUDA, 2048 on CPU")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--prompt-len", type=int, help="default 128 on CUDA, 16 on CPU")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, help="timed rounds, best kept (default 3 on CUDA, 5 on CPU)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (CPU runs only)")
    ap.add_argument("--smoke", action="store_true", help="the tiny preset at vocab 512, prompt 8 + 8 new tokens, "
                    "batch sizes 1 and 2, 1 round: proves the command end to end (seconds)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.preset, args.vocab, args.prompt_len, args.new_tokens = "tiny", 512, 8, 8
        args.batch_sizes, args.repeats = [1, 2], 1
    args.preset = args.preset or ("124m" if HAS_CUDA else "tiny")
    args.vocab = args.vocab or (50304 if HAS_CUDA else 2048)
    args.prompt_len = args.prompt_len or (128 if HAS_CUDA else 16)
    args.repeats = args.repeats or (3 if HAS_CUDA else 5)
    return args


def _timed(fn) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, result) of fn()."""
    if HAS_CUDA:
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    if HAS_CUDA:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0, result


def ours_engine(model: Transformer, prompts: torch.Tensor, new: int) -> torch.Tensor:
    engine = Engine(model, max_batch=prompts.shape[0])
    params = SamplingParams(max_new_tokens=new, temperature=0)
    results = run_batch(engine, [Request(p, params) for p in prompts.tolist()])
    return torch.tensor([r.tokens for r in results])


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    import transformers

    if not HAS_CUDA:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if HAS_CUDA else "cpu")
    dtype = torch.bfloat16 if HAS_CUDA else torch.float32
    cfg = ModelConfig(preset=args.preset).resolved(args.vocab)
    if args.prompt_len + args.new_tokens > cfg.max_seq_len:
        raise SystemExit(f"--prompt-len + --new-tokens must fit the preset's max_seq_len ({cfg.max_seq_len})")
    device_name = torch.cuda.get_device_name() if HAS_CUDA else f"cpu ({platform.processor() or platform.machine()})"
    threads = "" if HAS_CUDA else f", {torch.get_num_threads()} thread(s)"
    print(f"decode benchmark on {device_name}{threads}: preset {args.preset} ({cfg.num_params() / 1e6:.2f}M params, "
          f"vocab {args.vocab}), prompt {args.prompt_len} + {args.new_tokens} new tokens, {str(dtype).split('.')[-1]}, "
          f"greedy, eager, best of {args.repeats} rounds", flush=True)

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        export.export_hf(Transformer(cfg), folder, dtype=dtype)
        ours = export.import_hf(folder).to(device=device, dtype=dtype).eval()
        hf = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    hf = hf.to(device).eval()
    # no eos: every call decodes exactly new_tokens, so both sides do the same work
    hf_kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                     eos_token_id=None, pad_token_id=0)
    greedy = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0)
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, args.vocab, (max(args.batch_sizes), args.prompt_len), generator=gen).to(device)

    def run_hf(b: int) -> torch.Tensor:
        with torch.no_grad():
            out = hf.generate(prompts[:b], attention_mask=torch.ones_like(prompts[:b]), **hf_kwargs)
        return out[:, args.prompt_len:]

    def run_plain() -> torch.Tensor:
        return torch.tensor([generate(ours, prompts[0].tolist(), greedy)[0]])

    sizes = sorted(set(args.batch_sizes) | {1})
    for b in sizes:  # warm-up: allocator, kernel selection, lazy imports
        run_hf(b), ours_engine(ours, prompts[:b], 4)
    best: dict[tuple[str, int], float] = {}  # wall seconds
    best_cpu: dict[tuple[str, int], float] = {}  # CPU seconds of this process
    outputs: dict[tuple[str, int], torch.Tensor] = {}
    for _ in range(args.repeats):
        runs = [("plain", 1, run_plain)]
        for b in sizes:
            runs += [("hf", b, lambda b=b: run_hf(b)), ("ours", b, lambda b=b: ours_engine(ours, prompts[:b],
                                                                                           args.new_tokens))]
        for name, b, fn in runs:
            wall, cpu, out = _timed(fn)
            best[name, b] = min(best.get((name, b), float("inf")), wall)
            best_cpu[name, b] = min(best_cpu.get((name, b), float("inf")), cpu)
            outputs[name, b] = out

    rows = []
    for b in sizes:
        tokens = b * args.new_tokens
        agree = (outputs["ours", b].cpu() == outputs["hf", b].cpu()).float().mean().item()
        row = {"batch": b, "ours_path": "engine", "ours_tokens_per_sec": round(tokens / best["ours", b], 1),
               "hf_tokens_per_sec": round(tokens / best["hf", b], 1),
               "ratio": round(best["hf", b] / best["ours", b], 3), "tokens_agree": round(agree, 4)}
        if not HAS_CUDA:
            row["ratio_cpu"] = round(best_cpu["hf", b] / best_cpu["ours", b], 3)
        rows.append(row)
        print(f"  batch {b:>3}: ours (engine) {row['ours_tokens_per_sec']:>10.1f} tok/s   hf generate "
              f"{row['hf_tokens_per_sec']:>10.1f} tok/s   ours/hf {row['ratio']:.2f}x"
              + (f" (CPU time {row['ratio_cpu']:.2f}x)" if "ratio_cpu" in row else "") + f"   agree {agree:.2f}",
              flush=True)
    plain_tps = args.new_tokens / best["plain", 1]
    print(f"  batch   1: ours (one-sequence generate()) {plain_tps:>10.1f} tok/s", flush=True)
    one = rows[0]["ours_tokens_per_sec"]
    top = max(sizes)
    for r in rows[1:]:
        print(f"  ours at batch {r['batch']}: {r['ours_tokens_per_sec'] / one:.2f}x batch 1 (aggregate tokens/s)")

    summary = {
        "benchmark": "decode", "device": device_name, "torch": torch.__version__,
        "transformers": transformers.__version__, "preset": args.preset, "num_params": cfg.num_params(),
        "vocab": args.vocab, "dtype": str(dtype).split(".")[-1], "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens, "threads": None if HAS_CUDA else torch.get_num_threads(),
        "repeats": args.repeats, "ratio_vs_hf": rows[0]["ratio"], f"ratio_vs_hf_batch_{top}": rows[-1]["ratio"],
        **({"ratio_vs_hf_cpu": rows[0]["ratio_cpu"], f"ratio_vs_hf_batch_{top}_cpu": rows[-1]["ratio_cpu"]}
           if not HAS_CUDA else {}),
        f"batch_{top}_vs_1": round(rows[-1]["ours_tokens_per_sec"] / one, 2),
        "plain_generate_tokens_per_sec": round(plain_tps, 1), "results": rows,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
