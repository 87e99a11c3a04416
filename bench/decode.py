"""Decoding speed: our batched engine vs `transformers` `generate` on the same weights, and our aggregate
tokens/s as the batch grows.

Both decoders run greedy with a KV cache, the same prompt and the same number of new tokens (no stop token), on
the exported weights of one model (tiny preset by default, random weights: speed does not depend on what a model
learned). Each figure is the best of `--repeats` whole generations (prefill included), timed in the same process,
interleaved. The tokens are checked to be the same. The last line is JSON: `ratio_vs_hf` = our tokens/s / HF's at
batch 1 (target >= 1.5), and `batch_32_vs_1` = our aggregate tokens/s at batch 32 / at batch 1 (target >= 8).

    python bench/decode.py [--preset tiny] [--threads 1] [--new-tokens 128] [--batches 1 8 32]
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
import time  # noqa: E402

import torch  # noqa: E402

from llm_core.config import ModelConfig  # noqa: E402
from llm_core.export import hf_config, to_hf_state_dict  # noqa: E402
from llm_core.inference.engine import Engine, Request, run_batch  # noqa: E402
from llm_core.inference.generate import SamplingParams, generate  # noqa: E402
from llm_core.model.transformer import Transformer  # noqa: E402


def hf_model(model: Transformer):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(LlamaConfig(**hf_config(model.cfg)))
    hf.load_state_dict(to_hf_state_dict(model), strict=False)  # a tied head is one tensor on both sides
    return hf.eval()


def time_hf(hf, prompts: torch.Tensor, new: int) -> tuple[float, list[list[int]]]:
    t0 = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(prompts, do_sample=False, max_new_tokens=new, min_new_tokens=new,
                          attention_mask=torch.ones_like(prompts), pad_token_id=0, eos_token_id=None)
    return time.perf_counter() - t0, out[:, prompts.shape[1]:].tolist()


def time_ours(model: Transformer, prompts: list[list[int]], new: int) -> tuple[float, list[list[int]]]:
    engine = Engine(model, max_batch=len(prompts))
    params = SamplingParams(max_new_tokens=new, temperature=0)
    t0 = time.perf_counter()
    results = run_batch(engine, [Request(p, params) for p in prompts])
    return time.perf_counter() - t0, [r.tokens for r in results]


def _time_plain(model: Transformer, prompt: list[int], new: int) -> float:
    t0 = time.perf_counter()
    generate(model, prompt, SamplingParams(max_new_tokens=new, temperature=0))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(preset=args.preset).resolved(args.vocab)).eval()
    hf = hf_model(model)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, args.vocab, (max(args.batches), args.prompt_len), generator=g)
    new = args.new_tokens

    # one round = every measurement once, so a burst of load from other jobs hits them all alike; best of rounds
    time_hf(hf, prompts[:1], 4)
    time_ours(model, prompts[:1].tolist(), 4)
    t_hf, t_ours = [], {b: [] for b in args.batches}
    same = True
    for _ in range(args.repeats):
        t, theirs = time_hf(hf, prompts[:1], new)
        t_hf.append(t)
        for b in args.batches:
            t, ours = time_ours(model, prompts[:b].tolist(), new)
            t_ours[b].append(t)
            if b == 1:
                same = same and ours == theirs
    # the one-sequence reference decoder (no engine): what the engine's batch-1 path should match
    t_plain = min(_time_plain(model, prompts[0].tolist(), new) for _ in range(args.repeats))
    if 1 not in t_ours:
        t_ours[1] = [time_ours(model, prompts[:1].tolist(), new)[0] for _ in range(args.repeats)]
    hf_tps, ours_tps = new / min(t_hf), new / min(t_ours[1])
    scaling = {b: b * new / min(t_ours[b]) for b in args.batches}

    print(f"\n{args.preset} preset ({model.num_params() / 1e6:.2f}M params, vocab {args.vocab}), fp32, "
          f"{args.threads} thread(s), prompt {args.prompt_len} + {new} new tokens, greedy, best of {args.repeats}")
    print(f"{'decoder':<34}{'tokens/s':>10}")
    print(f"{'transformers generate, batch 1':<34}{hf_tps:>10.0f}")
    print(f"{'ours, one-sequence generate()':<34}{new / t_plain:>10.0f}   ratio {new / t_plain / hf_tps:.2f}x")
    print(f"{'ours, engine, batch 1':<34}{ours_tps:>10.0f}   ratio {ours_tps / hf_tps:.2f}x, same tokens: {same}")
    for b, tps in scaling.items():
        if b == 1:
            continue
        print(f"{f'ours, engine, batch {b} (aggregate)':<34}{tps:>10.0f}   {tps / ours_tps:.2f}x batch 1")
    top = max(args.batches)
    print(json.dumps({"ratio_vs_hf": round(ours_tps / hf_tps, 3), "hf_tokens_per_sec": round(hf_tps, 1),
                      "ours_tokens_per_sec": {str(b): round(t, 1) for b, t in scaling.items()},
                      f"batch_{top}_vs_1": round(scaling[top] / ours_tps, 2),
                      "same_tokens": same, "preset": args.preset, "threads": args.threads,
                      "machine": platform.machine(), "cuda": torch.cuda.is_available()}))


if __name__ == "__main__":
    main()
