"""Stage train_tokenizer: byte-level BPE on the pretraining corpus -> tokenizer.json + tokenizer_config.json."""

import argparse

from llm_core import sources
from llm_core.config import load_params
from llm_core.tokenizer import train_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("raw", help="downloaded pretraining corpus, e.g. data/raw/pretrain")
    ap.add_argument("out", help="output folder, e.g. models/tokenizer")
    args = ap.parse_args()
    params = load_params().tokenizer
    texts = sources.iter_texts(args.raw, "train")
    if params.train_bytes:  # a prefix of the corpus bounds time and memory on big corpora
        texts = sources.take_bytes(texts, params.train_bytes)
    tok = train_tokenizer(texts, params.vocab_size, args.out, min_frequency=params.min_frequency,
                          show_progress=True)
    print(f"tokenizer: vocab {tok.vocab_size} -> {args.out}")


if __name__ == "__main__":
    main()
