"""Throughput of the tokenize stage's core (parquet -> shards on worker processes) against raw encoders.

    python bench/tokenize_speed.py TEXT_DIR [--encoding cp1252] [--scale 8] [--workers 2] [--vocab 8192]
    python bench/tokenize_speed.py --smoke       # a few built-in stories, 1 repeat: proves the command (seconds)

The text is downloaded into parquet as `download_pretrain` does (data.source=local), a tokenizer is trained on it,
then the same documents are encoded by
  ours        shards.tokenize_pretrain (the tokenize stage's core): parquet read, encode on worker processes,
              BOS, shards + checksums + manifest, end to end
  tiktoken    tiktoken's encode_ordinary_batch on the same Encoding, texts already in memory, same thread count
  tokenizers  Hugging Face tokenizers' encode_batch on the same vocab (its own thread pool)
Prints a JSON object as its last line: throughputs in MB/s and ratio_vs_tiktoken, ratio_vs_tokenizers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpus import write_corpus  # noqa: E402
from llm_core.config import DataConfig  # noqa: E402
from llm_core.data import shards, sources  # noqa: E402
from llm_core.data.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

SHARD_TOKENS = 10_000_000  # the committed tokenize.shard_tokens


def prepare(text_dir: str, encoding: str, scale: int, tmp: Path) -> Path:
    """The corpus `scale` times over (links to the same files), written to parquet by the download code."""
    files = sorted(Path(text_dir).glob("*.txt"))
    if not files:
        raise SystemExit(f"no .txt files in {text_dir}")
    (tmp / "text").mkdir()
    for k in range(scale):
        for f in files:
            (tmp / "text" / f"{k}-{f.name}").symlink_to(f.resolve())
    data = DataConfig(source="local", paths=[str(tmp / "text")], encoding=encoding)
    sources.write_dataset("pretrain", data, tmp / "raw")
    return tmp / "raw"


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text_dir", nargs="?", help="a folder of .txt files (not with --smoke)")
    ap.add_argument("--encoding", default="utf-8")
    ap.add_argument("--scale", type=int, default=8, help="repeat the corpus this many times")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="built-in stories, scale 1, vocab 300, 1 repeat, 1 worker")
    args = ap.parse_args()
    if args.smoke:
        args.scale, args.vocab, args.repeats, args.workers = 1, 300, 1, 1
    elif not args.text_dir:
        ap.error("TEXT_DIR is required (or --smoke)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.smoke:
            args.text_dir = write_corpus(tmp / "smoke")
        raw = prepare(args.text_dir, args.encoding, args.scale, tmp)
        texts = list(sources.iter_texts(raw, "train")) + list(sources.iter_texts(raw, "val"))
        n_bytes = sum(len(t.encode()) for t in texts)
        train_tokenizer(sources.take_bytes(iter(texts), 8 << 20), args.vocab, tmp / "tok")
        tok = Tokenizer.from_dir(tmp / "tok")
        enc, hf = tok.tiktoken_encoding, tok.hf

        def ours():
            shards.tokenize_pretrain(raw, tok, tmp / "tokens", SHARD_TOKENS, args.workers)

        t_ours = best_of(ours, args.repeats)
        t_tiktoken = best_of(lambda: enc.encode_ordinary_batch(texts, num_threads=args.workers), args.repeats)
        t_hf = best_of(lambda: hf.encode_batch(texts, add_special_tokens=False), args.repeats)
        manifest = json.loads((tmp / "tokens" / "manifest.json").read_text())
        n_tokens = sum(f["tokens"] for f in manifest["files"].values())
    mb = n_bytes / 1e6
    result = {"bench": "tokenize", "smoke": args.smoke, "docs": len(texts), "mbytes": round(mb, 1), "tokens": n_tokens,
              "workers": args.workers, "vocab_size": tok.vocab_size,
              "ours_mb_s": round(mb / t_ours, 2), "tiktoken_mb_s": round(mb / t_tiktoken, 2),
              "tokenizers_mb_s": round(mb / t_hf, 2),
              "ratio_vs_tiktoken": round(t_tiktoken / t_ours, 3), "ratio_vs_tokenizers": round(t_hf / t_ours, 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
