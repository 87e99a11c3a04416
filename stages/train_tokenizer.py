"""Stage train_tokenizer: byte-level BPE on the pretraining corpus (or a pretrained tiktoken encoding, or the
tokenizer of an imported Hugging Face model) -> models/tokenizer/, plus its compression on the validation text ->
metrics/tokenizer.json."""

import argparse
import shutil
from pathlib import Path

from llm_core import cli
from llm_core.config import load_params
from llm_core.data import sources
from llm_core.data.tokenizer import Tokenizer, compression_report, train_tokenizer, write_tiktoken_reference
from llm_core.files import write_json

REPORT_BYTES = 16 << 20  # bytes per token settles long before this much validation text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("raw", help="downloaded pretraining corpus, e.g. data/raw/pretrain")
    ap.add_argument("out", help="output folder, e.g. models/tokenizer")
    ap.add_argument("--metrics", help="compression report, e.g. metrics/tokenizer.json")
    ap.add_argument("--init", default="models/init", help="the import_model stage's output (tokenizer.source: hf)")
    args = ap.parse_args()
    params = load_params().tokenizer
    if params.source == "train":
        texts = sources.iter_texts(args.raw, "train")  # streamed from parquet, never all in memory
        if params.train_bytes:  # a prefix of the corpus bounds time and memory on big corpora
            texts = sources.take_bytes(texts, params.train_bytes)
        tok = train_tokenizer(texts, params.vocab_size, args.out, min_frequency=params.min_frequency,
                              show_progress=True)
    elif params.source == "hf":
        imported = Path(args.init) / "tokenizer"
        if not imported.is_dir():
            raise FileNotFoundError(f"no imported tokenizer in {imported}; run `dvc repro import_model` first")
        shutil.copytree(imported, args.out, dirs_exist_ok=True)
        tok = Tokenizer.from_dir(args.out)
    else:
        tok = write_tiktoken_reference(params.source.split(":", 1)[1], args.out)
    report = compression_report(tok, sources.take_bytes(sources.iter_texts(args.raw, "val"), REPORT_BYTES))
    # the figure people compare goes to the metrics file; the counters behind it stay with the tokenizer
    write_json(f"{args.out}/report.json", report)
    if args.metrics:
        write_json(args.metrics, {"bytes_per_token": round(report["bytes_per_token"], 6),
                                  "vocab_size": report["vocab_size"]})
    print(f"tokenizer: {tok.name}, vocab {tok.vocab_size}, {report['bytes_per_token']:.2f} bytes/token on val "
          f"-> {args.out}")


if __name__ == "__main__":
    cli.run("train_tokenizer", main)
