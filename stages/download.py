"""Stage download: one dataset (pretrain corpus, SFT chats, HellaSwag items or the probe items of the in-training
HellaSwag curve) -> parquet shards and info.json (what was read: checksums, a hub revision)."""

import argparse

from llm_core import cli
from llm_core.config import load_params
from llm_core.data import sources


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("kind", choices=sources.KINDS)
    ap.add_argument("out", help="output folder, e.g. data/raw/pretrain")
    args = ap.parse_args()
    params = load_params()
    info = sources.write_dataset(args.kind, params.data, args.out)
    print(f"{args.kind}: {info['docs_train']} train + {info['docs_val']} val documents, {info['bytes']:,} bytes "
          f"from source={info['source']} -> {args.out}")


if __name__ == "__main__":
    cli.run("download", main)
