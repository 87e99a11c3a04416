"""Stage import_model: a Hugging Face model folder downloaded beforehand (model.init: hf, tokenizer.source: hf) ->
models/init: its weights and architecture in our format, its tokenizer, and init.json saying what was read. Without
either setting the folder is not read and init.json alone is written."""

import argparse
from pathlib import Path

from llm_core import cli
from llm_core.config import load_params
from llm_core.export.init import import_init


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", help="output folder, e.g. models/init")
    args = ap.parse_args()
    params = load_params()
    info = import_init(params.model, params.tokenizer, Path(args.out))
    if "folder" not in info:
        print(f"import_model: nothing to import (model.init and tokenizer.source name no Hugging Face folder) "
              f"-> {args.out}")
        return
    what = [f"{info['family']} weights ({info['num_params']:,} parameters)"] if "family" in info else []
    what += ["tokenizer" + (f" (+ {', '.join(info['added_tokens'])})" if info.get("added_tokens") else "")]
    print(f"import_model: {info['folder']}: {' and '.join(what)} -> {args.out}")


if __name__ == "__main__":
    cli.run("import_model", main)
