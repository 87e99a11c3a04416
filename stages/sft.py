"""Stage sft: fine-tune the pretrained model on chats, loss on assistant tokens only -> models/sft."""

import argparse
from pathlib import Path

from llm_core import cli, distributed
from llm_core.config import load_params
from llm_core.data import loader, shards
from llm_core.data.tokenizer import Tokenizer
from llm_core.files import write_metrics
from llm_core.model.io import read_config
from llm_core.training.loop import Job, compared, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", required=True, help="SFT token arrays, e.g. data/tokens/sft")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--init", required=True, help="the pretrained model folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--live", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()
    params = load_params()
    distributed.relaunch_if_needed(params.parallel, "stages.sft")

    tok = Tokenizer.from_dir(args.tokenizer)
    manifest = shards.load_manifest(args.tokens, tok)
    cfg = params.sft
    train_rows = loader.sft_rows(args.tokens, "train", cfg.seq_len, manifest, tok.end_id)
    val_rows = loader.sft_rows(args.tokens, "val", cfg.seq_len, manifest, tok.end_id)
    # the architecture is the pretrained model's own (config.json), whatever model.* says now
    model_cfg = read_config(args.init, attention=params.model.attention)
    job = Job(train_rows, val_rows, Path(args.out), Path(args.live), token_bytes=tok.token_bytes(),
              init_from=Path(args.init), data_fingerprint=shards.data_fingerprint(manifest), desc="sft")
    result = train(model_cfg, cfg, params.parallel, job)
    if distributed.is_main_process():
        metrics = compared(result)
        write_metrics(args.metrics, metrics)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    distributed.teardown()


if __name__ == "__main__":
    cli.run("sft", main)
