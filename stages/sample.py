"""Stage sample: generate from plain and chat prompts -> metrics/samples.json (prompts, outputs, tokens/s)."""

import argparse

import torch

from llm_core import cli
from llm_core.config import load_params
from llm_core.data import chat
from llm_core.data.tokenizer import Tokenizer
from llm_core.files import write_json
from llm_core.inference.generate import SamplingParams, generate
from llm_core.model.io import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    params = load_params()
    cfg = params.sample
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = Tokenizer.from_dir(args.tokenizer)
    model = load_model(args.model, attention=params.model.attention).to(device)
    sp = SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    samples, tokens, seconds = [], 0, 0.0
    jobs = [("plain", p, [tok.bos_id] + tok.encode(p), [tok.bos_id, tok.end_id]) for p in cfg.prompts]
    jobs += [("chat", p, chat.render([{"role": "user", "content": p}], tok, add_generation_prompt=True)[0],
              [tok.end_id, tok.bos_id]) for p in cfg.chat_prompts]
    for kind, prompt, ids, stops in jobs:
        out, stats = generate(model, ids, sp, stop_ids=stops, generator=gen)
        tokens += stats["tokens"]
        seconds += stats["decode_s"]
        samples.append({"kind": kind, "prompt": prompt, "output": tok.decode(out), "tokens": stats["tokens"]})
        print(f"[{kind}] {prompt!r} -> {tok.decode(out)!r}")
    write_json(args.out, {"tokens_per_sec": tokens / seconds if seconds else 0.0, "num_samples": len(samples),
                          "samples": samples})


if __name__ == "__main__":
    cli.run("sample", main)
