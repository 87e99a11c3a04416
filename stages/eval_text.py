"""Stage eval_text: how well a model predicts a text corpus -> metrics/eval_text.json (bits_per_byte,
byte_perplexity, word_perplexity, token_loss). The corpus is eval.text: by default the validation split of the
pretraining corpus, or any local / url / hf source, read as the download stage reads data."""

import argparse

import torch

from llm_core import cli, distributed, figures
from llm_core.config import load_params
from llm_core.data import sources
from llm_core.data.tokenizer import Tokenizer
from llm_core.evaluation import text
from llm_core.files import write_metrics
from llm_core.model.io import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--raw", required=True, help="the downloaded pretraining corpus (eval.text.source: pretrain_val)")
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()
    params = load_params()
    cfg = params.eval.text
    ctx = distributed.setup(params.parallel.backend)
    tok = Tokenizer.from_dir(args.tokenizer)
    model = load_model(args.model, attention=params.model.attention).to(ctx.device)
    if cfg.source == "pretrain_val":
        docs = sources.iter_texts(args.raw, "val")
    else:  # seed 0: only the built-in world, which eval.text does not offer, would use it
        docs = (rec["text"] for rec in sources.iter_records("pretrain", cfg.as_source(), 0, {}))
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.device.type == "cuda"):
        result = text.evaluate(model, text.limit(docs, cfg.max_docs, cfg.max_bytes), tok, params.eval.batch_size,
                               ctx)
    if ctx.is_main:
        write_metrics(args.metrics, result)
        print(f"eval_text: {figures.line(result)}")
    distributed.teardown()


if __name__ == "__main__":
    cli.run("eval_text", main)
