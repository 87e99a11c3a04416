"""Stages tokenize / tokenize_sft: the pretraining corpus -> .npy token shards, or the SFT chats -> rendered token and
loss-mask arrays; each output folder has its own manifest.json. Pretraining shards are encoded on worker processes,
and a killed run, rerun, continues after its last finished shard."""

import argparse
from pathlib import Path

from llm_core import cli
from llm_core.config import load_params
from llm_core.data import shards
from llm_core.data.tokenizer import Tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("kind", choices=("pretrain", "sft"))
    ap.add_argument("--raw", required=True, help="downloaded dataset, e.g. data/raw/pretrain")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True, help="e.g. data/tokens/pretrain")
    args = ap.parse_args()
    tok = Tokenizer.from_dir(args.tokenizer)
    if args.kind == "pretrain":
        params = load_params().tokenize
        manifest = shards.tokenize_pretrain(Path(args.raw), tok, Path(args.out), params.shard_tokens,
                                            params.num_workers())
    else:
        manifest = shards.tokenize_sft(Path(args.raw), tok, Path(args.out))
    total = sum(f["tokens"] for name, f in manifest["files"].items() if not name.endswith(("mask.npy", "offsets.npy")))
    print(f"tokenize {args.kind}: {total:,} tokens in {manifest['dtype']} arrays -> {args.out}")


if __name__ == "__main__":
    cli.run("tokenize", main)
