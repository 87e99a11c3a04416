"""Stage tokenize: pretraining corpus and SFT chats -> .npy token shards + manifest.json, on worker processes;
a killed run, rerun, continues after its last finished shard."""

import argparse
from pathlib import Path

from llm_core import shards
from llm_core.config import load_params
from llm_core.tokenizer import Tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pretrain", required=True, help="downloaded pretraining corpus")
    ap.add_argument("--sft", help="downloaded SFT chats (optional)")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    params = load_params().tokenize
    tok = Tokenizer.from_dir(args.tokenizer)
    manifest = shards.tokenize_all(Path(args.pretrain), Path(args.sft) if args.sft else None, tok, Path(args.out),
                                   params.shard_tokens, params.num_workers())
    total = sum(f["tokens"] for name, f in manifest["files"].items() if name.startswith("pretrain/"))
    print(f"tokenize: {total:,} pretraining tokens in {manifest['dtype']} shards -> {args.out}")
    if "sft_skipped" in manifest:
        print(f"tokenize: SFT chats skipped: {manifest['sft_skipped']}")


if __name__ == "__main__":
    main()
