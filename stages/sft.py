"""Stage sft: fine-tune the pretrained model on chats, loss on assistant tokens only -> models/sft."""

from pathlib import Path

from llm_core import cli
from llm_core.data import loader
from llm_core.model.io import read_config
from llm_core.training import stage


def build(inputs: stage.Inputs):
    args, params, cfg = inputs.args, inputs.params, inputs.params.sft
    pad_id = inputs.tok.end_id  # rows are packed chats, the tail padded with the end token
    train_rows = loader.sft_rows(args.tokens, "train", cfg.seq_len, inputs.manifest, pad_id)
    val_rows = loader.sft_rows(args.tokens, "val", cfg.seq_len, inputs.manifest, pad_id)
    # the architecture is the pretrained model's own (config.json), whatever model.* says now
    model_cfg = read_config(args.init, attention=params.model.attention)
    return model_cfg, cfg, inputs.job(train_rows, val_rows, init_from=Path(args.init), chat=True)


def main() -> None:
    ap = stage.arguments("sft", __doc__)
    ap.add_argument("--init", default="models/pretrain", help="the pretrained model folder")
    stage.run("sft", "stages.sft", ap.parse_args(), build)


if __name__ == "__main__":
    cli.run("sft", main)
