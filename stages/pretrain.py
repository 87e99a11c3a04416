"""Stage pretrain: train the Transformer on the token shards -> models/pretrain + metrics/pretrain.json."""

import argparse
from pathlib import Path

from llm_core import cli, distributed
from llm_core.config import load_params
from llm_core.data import loader, shards, sources
from llm_core.data.tokenizer import Tokenizer
from llm_core.files import write_metrics
from llm_core.training.loop import Job, compared, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", required=True, help="pretraining token shards, e.g. data/tokens/pretrain")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--raw", required=True, help="downloaded corpus (its info.json may know the entropy floor)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--live", required=True, help="dvclive folder for the curves")
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args()
    params = load_params()
    distributed.relaunch_if_needed(params.parallel, "stages.pretrain")

    tok = Tokenizer.from_dir(args.tokenizer)
    manifest = shards.load_manifest(args.tokens, tok)
    cfg = params.pretrain
    train_rows = loader.pretrain_rows(args.tokens, "train", cfg.seq_len, manifest)
    val_rows = loader.pretrain_rows(args.tokens, "val", cfg.seq_len, manifest)
    job = Job(train_rows, val_rows, Path(args.out), Path(args.live), token_bytes=tok.token_bytes(),
              data_fingerprint=shards.data_fingerprint(manifest), desc="pretrain")
    result = train(params.model.resolved(tok.vocab_size), cfg, params.parallel, job)

    if distributed.is_main_process():
        metrics = compared(result)
        metrics["unigram_bpb"] = shards.unigram_bpb(train_rows.shards, val_rows.shards, tok.token_bytes())
        floor = sources.dataset_info(args.raw).get("entropy_floor_bpb")
        if floor is not None and "val_bpb" in metrics:
            metrics["entropy_floor_bpb"] = floor
            metrics["bpb_gap_to_floor"] = metrics["val_bpb"] - floor
        write_metrics(args.metrics, metrics)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    distributed.teardown()


if __name__ == "__main__":
    cli.run("pretrain", main)
