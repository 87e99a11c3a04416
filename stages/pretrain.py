"""Stage pretrain: train the Transformer on the token shards -> models/pretrain + metrics/pretrain.json. With
model.init: hf it continues from the imported model (models/init), whose architecture it keeps."""

from pathlib import Path

from llm_core import cli
from llm_core.data import loader, shards, sources
from llm_core.model.io import read_config
from llm_core.training import stage


def build(inputs: stage.Inputs):
    args, params, cfg = inputs.args, inputs.params, inputs.params.pretrain
    train_rows = loader.pretrain_rows(args.tokens, "train", cfg.seq_len, inputs.manifest)
    val_rows = loader.pretrain_rows(args.tokens, "val", cfg.seq_len, inputs.manifest)
    every = params.eval.hellaswag_every if args.probe else 0
    items = list(sources.read_dataset(args.probe, "val", "download_probe")) if every else None
    init = Path(args.init) if params.model.init == "hf" else None
    if init is not None and not (init / "model.safetensors").is_file():
        raise FileNotFoundError(f"no imported model in {init}; run `dvc repro import_model` first")
    job = inputs.job(train_rows, val_rows, init_from=init, hellaswag=items, hellaswag_every=every,
                     tokenizer=inputs.tok)
    # an imported model keeps its own architecture (checked against model.* by the import stage)
    model_cfg = read_config(init, params.model.attention) if init else params.model.resolved(inputs.tok.vocab_size)
    if model_cfg.vocab_size < inputs.tok.vocab_size:
        raise ValueError(f"{args.tokenizer} has {inputs.tok.vocab_size} tokens but {init} only "
                         f"{model_cfg.vocab_size} embeddings; rerun `dvc repro import_model train_tokenizer`")
    return model_cfg, cfg, job


def floor_metrics(inputs: stage.Inputs, job, metrics: dict) -> dict:
    """How far from what the data allows: a unigram model's bpb and, for the built-in world, the entropy floor."""
    extra = {"unigram_bpb": shards.unigram_bpb(job.train_rows.shards, job.val_rows.shards, inputs.tok.token_bytes())}
    floor = sources.dataset_info(inputs.args.raw).get("entropy_floor_bpb")
    if floor is not None and "val_bpb" in metrics:
        extra["entropy_floor_bpb"] = floor
        extra["bpb_gap_to_floor"] = metrics["val_bpb"] - floor
    return extra


def main() -> None:
    ap = stage.arguments("pretrain", __doc__)
    ap.add_argument("--raw", default="data/raw/pretrain", help="the corpus (its info.json may know the entropy floor)")
    ap.add_argument("--probe", help="HellaSwag-format items scored during training (eval.hellaswag_every), e.g. "
                    "data/raw/probe")
    ap.add_argument("--init", default="models/init", help="the imported model (model.init: hf)")
    stage.run("pretrain", "stages.pretrain", ap.parse_args(), build, floor_metrics)


if __name__ == "__main__":
    cli.run("pretrain", main)
