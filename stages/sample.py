"""Stage sample: decode the plain and chat prompts of params.yaml and of `sample.prompts_file` as one batch ->
metrics/samples.json (the params prompts' outputs) and a .jsonl with one record per prompt; the decoding speed goes to
the run-info file (it differs from run to run, so DVC never hashes it)."""

import argparse
import json
from pathlib import Path

from llm_core import cli
from llm_core.config import load_params
from llm_core.files import write_bytes, write_json, write_run_info
from llm_core.inference.generate import SamplingParams
from llm_core.inference.loading import load
from llm_core.inference.prompts import Prompt, read_prompts_file, sample_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--outputs", default=None, help="the .jsonl of every prompt's output (default: beside --out)")
    ap.add_argument("--runtime", default=None, help="run-info file: decoding tokens/s, date (volatile)")
    args = ap.parse_args()
    outputs = args.outputs or str(Path(args.out).with_suffix(".jsonl"))
    params = load_params()
    cfg = params.sample
    prompts = [Prompt("plain", p) for p in cfg.prompts]
    prompts += [Prompt("chat", [{"role": "user", "content": p}]) for p in cfg.chat_prompts]
    from_params = len(prompts)
    if cfg.prompts_file:
        prompts += read_prompts_file(cfg.prompts_file)
    loaded = load(args.model, args.tokenizer, attention=params.model.attention)
    sp = SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty)
    records, stats = sample_prompts(loaded, prompts, sp, cfg.seed, cfg.max_batch)
    for r in records[:from_params]:
        shown = r["prompt"] if r["kind"] == "plain" else r["prompt"][-1]["content"]
        print(f"[{r['kind']}] {shown!r} -> {r['output']!r} ({r['finish_reason']})")
    samples = [dict(r, prompt=r["prompt"] if r["kind"] == "plain" else r["prompt"][-1]["content"])
               for r in records[:from_params]]
    write_bytes(outputs, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
    write_json(args.out, {"num_samples": len(records), "samples": samples})
    if args.runtime:
        write_run_info(args.runtime, {"tokens_per_sec": stats["tokens_per_sec"], "decode_seconds": stats["seconds"],
                                      "device": next(loaded.model.parameters()).device.type})


if __name__ == "__main__":
    cli.run("sample", main)
