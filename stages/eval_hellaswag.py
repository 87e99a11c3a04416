"""Stage eval_hellaswag: score a model on HellaSwag-format items -> metrics/hellaswag.json (acc, acc_norm,
acc_norm_tokens) and one record per item (context, endings, log-likelihoods, picks) in a .jsonl beside it."""

import argparse
import json

import torch

from llm_core import cli, distributed, figures
from llm_core.config import load_params
from llm_core.data import sources
from llm_core.data.tokenizer import Tokenizer
from llm_core.evaluation import hellaswag
from llm_core.files import write_bytes, write_metrics
from llm_core.model.io import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--items", required=True, help="downloaded HellaSwag items, e.g. data/raw/hellaswag")
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--records", required=True, help="per-item results (.jsonl), e.g. metrics/hellaswag_items.jsonl")
    args = ap.parse_args()
    params = load_params()
    ctx = distributed.setup(params.parallel.backend)
    tok = Tokenizer.from_dir(args.tokenizer)
    model = load_model(args.model, attention=params.model.attention).to(ctx.device)
    items = list(sources.read_dataset(args.items, "val", "download_hellaswag"))
    if params.eval.max_items:
        items = items[:params.eval.max_items]
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.device.type == "cuda"):
        result, records = hellaswag.evaluate(model, items, tok, params.eval.batch_size, ctx)
    if ctx.is_main:
        write_bytes(args.records, "".join(json.dumps(r) + "\n" for r in records).encode())
        result.update(hellaswag.by_kind(records))
        write_metrics(args.metrics, result)
        print(f"eval_hellaswag: {figures.line(result)}")
    distributed.teardown()


if __name__ == "__main__":
    cli.run("eval_hellaswag", main)
