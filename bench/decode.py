"""Decoding speed: our KV-cache generation against `transformers` `generate`, on the same exported weights.

A model of a preset's shape (random weights, seed 0) is exported to a Hugging Face Llama folder with
`llm_core.export`; `transformers` loads that folder and our side imports it back with `export.import_hf`, so both
decode from the very same tensors. Greedy decoding, no stop token: every row produces exactly `--new-tokens` tokens
after a random prompt of `--prompt-len` tokens. tokens/s = batch x new tokens / wall time of the whole call (prefill
included, the way a caller sees it); each figure is the best of `--repeats` after one untimed warm-up call.

- ours at batch 1: `llm_core.inference.generate.generate`, the function the `sample` stage and the chat use;
- ours at batch > 1: the same prefill-then-one-token-steps loop over `Transformer` + `KVCache`, batched (the package
  decodes one sequence at a time today, so this row measures the model and its cache, not a product API);
- hf: `LlamaForCausalLM.generate(do_sample=False)` with its default dynamic cache and SDPA attention.

Both run eager (no torch.compile, no CUDA graphs) in bf16 on CUDA and fp32 on the CPU. Each row's `tokens_agree` is
the share of positions where the two greedy outputs agree (1.0 in fp32; in bf16 the two models round differently, so
a near tie may flip and the rest of that row then follows another path).

    python bench/decode.py                                   # 124m, batch 1 and 32 on a GPU; tiny on CPU
    python bench/decode.py --preset 350m --batch-sizes 1 8 64 --new-tokens 256

The last line of output is a JSON object. Record GPU numbers in bench/RESULTS.md with date and hardware.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time

import torch

from llm_core import export
from llm_core.config import PRESETS, ModelConfig
from llm_core.inference.generate import SamplingParams, generate
from llm_core.model.transformer import KVCache, Transformer

HAS_CUDA = torch.cuda.is_available()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), help="default 124m on CUDA, tiny on CPU")
    ap.add_argument("--vocab", type=int, help="default 50304 on CUDA, 512 on CPU")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--prompt-len", type=int, help="default 128 on CUDA, 8 on CPU")
    ap.add_argument("--new-tokens", type=int, help="default 128 on CUDA, 8 on CPU")
    ap.add_argument("--repeats", type=int, help="timed calls per figure, best kept (default 3 on CUDA, 1 on CPU)")
    args = ap.parse_args(argv)
    args.preset = args.preset or ("124m" if HAS_CUDA else "tiny")
    args.vocab = args.vocab or (50304 if HAS_CUDA else 512)
    args.prompt_len = args.prompt_len or (128 if HAS_CUDA else 8)
    args.new_tokens = args.new_tokens or (128 if HAS_CUDA else 8)
    args.repeats = args.repeats or (3 if HAS_CUDA else 1)
    return args


@torch.no_grad()
def decode_batch(model: Transformer, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy continuation (B, new_tokens) of equal-length prompts (B, T): generate()'s loop, batched."""
    batch, length = prompts.shape
    dtype = next(model.parameters()).dtype
    cache = KVCache.empty(model.cfg, batch, length + new_tokens, prompts.device, dtype)
    nxt = model(prompts, cache)[:, -1].argmax(-1, keepdim=True)  # prefill -> (B, 1)
    out = [nxt]
    for _ in range(new_tokens - 1):
        nxt = model(nxt, cache)[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
    return torch.cat(out, dim=1)


def _best_seconds(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up: allocator, kernel selection, lazy imports
    best, result = float("inf"), None
    for _ in range(repeats):
        if HAS_CUDA:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = fn()
        if HAS_CUDA:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    import transformers

    device = torch.device("cuda" if HAS_CUDA else "cpu")
    dtype = torch.bfloat16 if HAS_CUDA else torch.float32
    cfg = ModelConfig(preset=args.preset).resolved(args.vocab)
    if args.prompt_len + args.new_tokens > cfg.max_seq_len:
        raise SystemExit(f"--prompt-len + --new-tokens must fit the preset's max_seq_len ({cfg.max_seq_len})")
    device_name = torch.cuda.get_device_name() if HAS_CUDA else f"cpu ({platform.processor() or platform.machine()})"
    print(f"decode benchmark on {device_name}: preset {args.preset} ({cfg.num_params() / 1e6:.1f}M params, vocab "
          f"{args.vocab}), prompt {args.prompt_len} + {args.new_tokens} new tokens, {str(dtype).split('.')[-1]}, "
          f"greedy, eager", flush=True)

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
    rows = []
    for batch in args.batch_sizes:
        prompts = torch.randint(0, args.vocab, (batch, args.prompt_len), generator=gen).to(device)
        if batch == 1:
            prompt = prompts[0].tolist()
            sec_ours, out_ours = _best_seconds(lambda: torch.tensor([generate(ours, prompt, greedy)[0]]),
                                               args.repeats)
            path = "generate"
        else:
            sec_ours, out_ours = _best_seconds(lambda: decode_batch(ours, prompts, args.new_tokens), args.repeats)
            path = "batched loop"
        with torch.no_grad():
            sec_hf, out_hf = _best_seconds(lambda: hf.generate(prompts, attention_mask=torch.ones_like(prompts),
                                                               **hf_kwargs), args.repeats)
        agree = (out_ours.cpu() == out_hf[:, args.prompt_len:].cpu()).float().mean().item()
        tokens = batch * args.new_tokens
        row = {"batch": batch, "ours_path": path, "ours_tokens_per_sec": round(tokens / sec_ours, 1),
               "hf_tokens_per_sec": round(tokens / sec_hf, 1), "ratio": round(sec_hf / sec_ours, 3),
               "tokens_agree": round(agree, 4)}
        rows.append(row)
        print(f"  batch {batch:>3}: ours ({path}) {row['ours_tokens_per_sec']:>10.1f} tok/s   hf generate "
              f"{row['hf_tokens_per_sec']:>10.1f} tok/s   ours/hf {row['ratio']:.2f}x", flush=True)

    summary = {
        "benchmark": "decode", "device": device_name, "torch": torch.__version__,
        "transformers": transformers.__version__, "preset": args.preset, "num_params": cfg.num_params(),
        "vocab": args.vocab, "dtype": str(dtype).split(".")[-1], "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens, "results": rows,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
