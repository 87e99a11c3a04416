"""Stage eval_chat: how often the chat model answers right -> metrics/chat.json (accuracy overall and by kind on
held-out questions about the built-in world; assistant-token loss and exact match for other SFT sources)."""

import argparse

import torch

from llm_core import cli, figures
from llm_core.config import load_params
from llm_core.data import sources, synthetic_chat
from llm_core.data.tokenizer import Tokenizer
from llm_core.evaluation.chat import score_reference, score_world
from llm_core.files import write_json, write_metrics
from llm_core.model.io import load_model

WORLD_SEED_OFFSET = 7919  # held-out questions: a seed the SFT chats (data.seed + 1) never use


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--sft", required=True, help="downloaded SFT chats (their val split, for other sources)")
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--replies", required=True, help="every question, reply and verdict (.json)")
    args = ap.parse_args()
    params = load_params()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = Tokenizer.from_dir(args.tokenizer)
    model = load_model(args.model, attention=params.model.attention).to(device).eval()
    n = params.eval.chat_items
    if params.data.sft.source == "synthetic":
        items = synthetic_chat.generate_chat_eval(params.data.seed + WORLD_SEED_OFFSET, n)
        metrics, replies = score_world(model, tok, items)
    else:
        convs = [rec["messages"] for rec in sources.read_dataset(args.sft, "val", "download_sft")][:n]
        metrics, replies = score_reference(model, tok, convs)
    write_metrics(args.metrics, metrics)
    write_json(args.replies, replies)
    print(f"eval_chat: {figures.line(metrics)}")


if __name__ == "__main__":
    cli.run("eval_chat", main)
