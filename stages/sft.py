"""Stage sft: fine-tune the pretrained model on chats, loss on assistant tokens only -> models/sft."""

import argparse
import sys
from pathlib import Path

from llm_core import cli, distributed
from llm_core.config import load_params
from llm_core.data import loader, shards
from llm_core.data.tokenizer import Tokenizer
from llm_core.files import write_metrics, write_run_info
from llm_core.model.io import read_config
from llm_core.training import plan
from llm_core.training.loop import RUNTIME, Job, compared, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", default="data/tokens/sft", help="SFT token arrays")
    ap.add_argument("--tokenizer", default="models/tokenizer")
    ap.add_argument("--init", default="models/pretrain", help="the pretrained model folder")
    ap.add_argument("--out", default="models/sft")
    ap.add_argument("--live", default="dvclive/sft")
    ap.add_argument("--metrics", default="metrics/sft.json")
    ap.add_argument("--runtime", default="metrics/runtime/sft.json",
                    help="run-info file: throughput, time by phase, date (volatile: never hashed by DVC)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, memory and time estimates; write nothing")
    args = ap.parse_args()
    params = load_params()
    if not plan.requested(args.dry_run):
        distributed.relaunch_if_needed(params.parallel, "stages.sft")

    tok = Tokenizer.from_dir(args.tokenizer)
    manifest = shards.load_manifest(args.tokens, tok)
    cfg = params.sft
    train_rows = loader.sft_rows(args.tokens, "train", cfg.seq_len, manifest, tok.end_id)
    val_rows = loader.sft_rows(args.tokens, "val", cfg.seq_len, manifest, tok.end_id)
    # the architecture is the pretrained model's own (config.json), whatever model.* says now
    model_cfg = read_config(args.init, attention=params.model.attention)
    job = Job(train_rows, val_rows, Path(args.out), Path(args.live), token_bytes=tok.token_bytes(), bos_id=tok.bos_id,
              init_from=Path(args.init), data_fingerprint=shards.data_fingerprint(manifest), desc="sft", chat=True)
    if plan.requested(args.dry_run):
        plan.dry_run(model_cfg, cfg, params.parallel, job, "sft")
        sys.exit(plan.EXIT_STATUS)
    result = train(model_cfg, cfg, params.parallel, job)
    if distributed.is_main_process():
        metrics = compared(result)
        write_metrics(args.metrics, metrics)
        write_run_info(args.runtime, result[RUNTIME])
        for shown in (metrics, result[RUNTIME]):
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in shown.items()})
    distributed.teardown()


if __name__ == "__main__":
    cli.run("sft", main)
