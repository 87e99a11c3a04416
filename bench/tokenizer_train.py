"""Time of our train_tokenizer stage against a bare Hugging Face BpeTrainer on the same bytes.

    python bench/tokenizer_train.py TEXT_DIR [--encoding cp1252] [--vocab 8192]
    python bench/tokenizer_train.py --smoke     # a few built-in stories, vocab 300, 1 repeat (seconds)

ours: the stage's main() as `dvc repro train_tokenizer` runs it (texts streamed from parquet, training, tiktoken
rank layout, merge rules, files written, compression report). raw: `Tokenizer.train_from_iterator` with the same
pre-tokenizer, vocab and min_frequency over the same texts already in memory; raw_bytelevel: the same with the stock
GPT-2 ByteLevel pre-tokenizer, for reference. Prints a JSON object as its last line; key ratio_vs_raw_trainer =
time ours / time raw.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenizers import Tokenizer as HFTokenizer  # noqa: E402
from tokenizers import models, pre_tokenizers, trainers  # noqa: E402

from bench.corpus import write_corpus  # noqa: E402
from llm_core.config import DataConfig  # noqa: E402
from llm_core.data import sources  # noqa: E402
from llm_core.data import tokenizer as tk  # noqa: E402


def raw_train(texts: list[str], vocab: int, pre_tokenizer) -> float:
    t0 = time.perf_counter()
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab - len(tk.SPECIAL_TOKENS), min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    hf.train_from_iterator(texts, trainer=trainer)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text_dir", nargs="?", help="a folder of .txt files (not with --smoke)")
    ap.add_argument("--encoding", default="utf-8")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="built-in stories, vocab 300, 1 repeat")
    args = ap.parse_args()
    if args.smoke:
        args.vocab, args.repeats = 300, 1
    elif not args.text_dir:
        ap.error("TEXT_DIR is required (or --smoke)")
    from stages import train_tokenizer as stage

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.smoke:
            args.text_dir = write_corpus(tmp / "smoke")
        data = DataConfig(source="local", paths=[str(Path(args.text_dir) / "*.txt")], encoding=args.encoding)
        sources.write_dataset("pretrain", data, tmp / "raw")
        texts = list(sources.iter_texts(tmp / "raw", "train"))
        n_bytes = sum(len(t.encode()) for t in texts)
        (tmp / "params.yaml").write_text(f"tokenizer:\n  vocab_size: {args.vocab}\n")

        def ours() -> float:
            cwd = os.getcwd()
            os.chdir(tmp)
            sys.argv = ["train_tokenizer", "raw", "tok", "--metrics", "tokenizer.json"]
            try:
                t0 = time.perf_counter()
                stage.main()
                return time.perf_counter() - t0
            finally:
                os.chdir(cwd)

        # interleaved, best of `repeats`: the first run of anything pays for cold caches
        t_raw = t_ours = t_bytelevel = float("inf")
        for _ in range(args.repeats):
            t_raw = min(t_raw, raw_train(texts, args.vocab, tk._pre_tokenizer()))
            t_ours = min(t_ours, ours())
            bytelevel = pre_tokenizers.ByteLevel(add_prefix_space=False)
            t_bytelevel = min(t_bytelevel, raw_train(texts, args.vocab, bytelevel))
        report = json.loads((tmp / "tokenizer.json").read_text())
    print(json.dumps({"bench": "tokenizer_train", "smoke": args.smoke, "mbytes": round(n_bytes / 1e6, 1),
                      "vocab_size": args.vocab,
                      "ours_s": round(t_ours, 2), "raw_s": round(t_raw, 2), "raw_bytelevel_s": round(t_bytelevel, 2),
                      "bytes_per_token_val": round(report["bytes_per_token"], 3),
                      "ratio_vs_raw_trainer": round(t_ours / t_raw, 3),
                      "ratio_vs_bytelevel_trainer": round(t_ours / t_bytelevel, 3)}))


if __name__ == "__main__":
    main()
