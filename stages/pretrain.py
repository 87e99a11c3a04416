"""Stage pretrain: train the Transformer on the token shards -> models/pretrain + metrics/pretrain.json."""

import argparse
import sys
from pathlib import Path

from llm_core import cli, distributed
from llm_core.config import load_params
from llm_core.data import loader, shards, sources
from llm_core.data.tokenizer import Tokenizer
from llm_core.files import write_metrics, write_run_info
from llm_core.training import plan
from llm_core.training.loop import RUNTIME, Job, compared, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", default="data/tokens/pretrain", help="pretraining token shards")
    ap.add_argument("--tokenizer", default="models/tokenizer")
    ap.add_argument("--raw", default="data/raw/pretrain", help="the corpus (its info.json may know the entropy floor)")
    ap.add_argument("--out", default="models/pretrain")
    ap.add_argument("--live", default="dvclive/pretrain", help="dvclive folder for the curves")
    ap.add_argument("--metrics", default="metrics/pretrain.json")
    ap.add_argument("--runtime", default="metrics/runtime/pretrain.json",
                    help="run-info file: throughput, time by phase, date (volatile: never hashed by DVC)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, memory and time estimates; write nothing")
    ap.add_argument("--probe", help="HellaSwag-format items scored during training (eval.hellaswag_every), e.g. "
                    "data/raw/probe")
    args = ap.parse_args()
    params = load_params()
    if not plan.requested(args.dry_run):
        distributed.relaunch_if_needed(params.parallel, "stages.pretrain")

    tok = Tokenizer.from_dir(args.tokenizer)
    manifest = shards.load_manifest(args.tokens, tok)
    cfg = params.pretrain
    train_rows = loader.pretrain_rows(args.tokens, "train", cfg.seq_len, manifest)
    val_rows = loader.pretrain_rows(args.tokens, "val", cfg.seq_len, manifest)
    every = params.eval.hellaswag_every if args.probe else 0
    items = list(sources.read_dataset(args.probe, "val", "download_probe")) if every else None
    job = Job(train_rows, val_rows, Path(args.out), Path(args.live), token_bytes=tok.token_bytes(), bos_id=tok.bos_id,
              data_fingerprint=shards.data_fingerprint(manifest), desc="pretrain", hellaswag=items,
              hellaswag_every=every, tokenizer=tok)
    model_cfg = params.model.resolved(tok.vocab_size)
    if plan.requested(args.dry_run):
        plan.dry_run(model_cfg, cfg, params.parallel, job, "pretrain")
        sys.exit(plan.EXIT_STATUS)
    result = train(model_cfg, cfg, params.parallel, job)

    if distributed.is_main_process():
        metrics = compared(result)
        metrics["unigram_bpb"] = shards.unigram_bpb(train_rows.shards, val_rows.shards, tok.token_bytes())
        floor = sources.dataset_info(args.raw).get("entropy_floor_bpb")
        if floor is not None and "val_bpb" in metrics:
            metrics["entropy_floor_bpb"] = floor
            metrics["bpb_gap_to_floor"] = metrics["val_bpb"] - floor
        write_metrics(args.metrics, metrics)
        write_run_info(args.runtime, result[RUNTIME])
        for shown in (metrics, result[RUNTIME]):
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in shown.items()})
    distributed.teardown()


if __name__ == "__main__":
    cli.run("pretrain", main)
