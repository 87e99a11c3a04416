"""The command line of the Hugging Face interop (`python -m llm_core.export`, see the package's docstring)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from llm_core import export
from llm_core.config import ModelConfig, TokenizerConfig
from llm_core.export.convert import DTYPES, export_hf, import_hf
from llm_core.export.init import TOKENIZER_DIR, import_init
from llm_core.model.io import load_model, write_model
from llm_core.model.transformer import Transformer


def _verify(model: Transformer, folder: Path) -> float:
    """Max |logit difference| between our model and the transformers model (its family's) in `folder`."""
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    x = torch.randint(0, model.cfg.vocab_size, (1, min(32, model.cfg.max_seq_len)))
    with torch.no_grad():
        return (hf(x).logits - model.float().eval()(x)).abs().max().item()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m llm_core.export", description=export.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="our model folder (models/sft, models/pretrain, a checkpoint step_*), "
                                           "or with --from-hf a Hugging Face folder (Llama, Qwen2, Mistral)")
    ap.add_argument("dst", type=Path, help="folder to write (replaced if it exists)")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer folder to include (models/tokenizer)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weight dtype of the export")
    ap.add_argument("--verify", action="store_true",
                    help="load the export with transformers and compare its logits with ours")
    ap.add_argument("--from-hf", action="store_true",
                    help="import: src is a Hugging Face folder, dst becomes our format")
    args = ap.parse_args(argv)
    if args.from_hf:
        try:
            if (args.src / "tokenizer.json").is_file():  # as the import_model stage does it
                info = import_init(ModelConfig(init="hf", init_path=str(args.src)), TokenizerConfig(source="hf"),
                                   args.dst)
                # a model folder keeps its tokenizer beside the weights (llm-chat --model finds it there)
                for path in sorted((args.dst / TOKENIZER_DIR).iterdir()):
                    path.rename(args.dst / path.name)
                (args.dst / TOKENIZER_DIR).rmdir()
                count = info["num_params"]
            else:
                model = import_hf(args.src)
                write_model(args.dst, model)
                count = model.num_params()
        except (ValueError, FileNotFoundError) as e:
            sys.exit(f"import failed: {e}")
        print(f"imported {args.src} -> {args.dst} ({count:,} parameters)")
        return
    try:
        model = load_model(args.src)
        out = export_hf(model, args.dst, args.tokenizer, dtype=DTYPES[args.dtype])
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"export failed: {e}")
    print(f"exported {args.src} -> {out} ({model.num_params():,} parameters, {args.dtype})")
    if args.verify:
        diff = _verify(model, out)
        print(f"transformers {json.loads((out / 'config.json').read_text())['architectures'][0]} vs llm_core: "
              f"max |logit diff| = {diff:.2e}")
        if args.dtype == "fp32" and diff > 1e-3:
            sys.exit("export failed verification: logits differ")
