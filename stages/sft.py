"""Stage sft: fine-tune the pretrained model on chats, loss on assistant tokens only -> models/sft."""

import argparse
import os
from pathlib import Path

from llm_core import checkpoint, distributed, loader, shards
from llm_core.config import load_params
from llm_core.tokenizer import Tokenizer
from llm_core.tracking import write_metrics
from llm_core.train import Job, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", required=True)
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
    model_cfg = checkpoint.read_config(args.init, attention=params.model.attention)
    job = Job(train_rows, val_rows, Path(args.out), Path(args.live), token_bytes=tok.token_bytes(),
              init_from=Path(args.init), data_fingerprint=shards.data_fingerprint(manifest), desc="sft")
    result = train(model_cfg, cfg, params.parallel, job)
    if int(os.environ.get("RANK", "0")) == 0:
        write_metrics(args.metrics, result)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})
    distributed.teardown()


if __name__ == "__main__":
    main()
