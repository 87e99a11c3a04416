"""HellaSwag-style multiple choice: scoring by the model's loss on each ending, in the conventions people compare with.

For every item the context (after <|bos|>) is followed by each candidate ending (with a leading space). Three picks:
- `acc`: the ending with the highest total log-likelihood (lm-evaluation-harness `acc`).
- `acc_norm`: log-likelihood divided by the ending's length in characters (lm-evaluation-harness `acc_norm`, the
  figure of published HellaSwag tables). Official items get the harness's preprocessing first: context =
  activity_label + ": " + ctx_a + " " + ctx_b.capitalize(), then " [title]" -> ". ", other [tags] dropped, double
  spaces collapsed. Items of the built-in world are plain story text and are used as they are.
- `acc_norm_tokens`: mean loss per token of the ending (build-nanogpt's `acc_norm`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from llm_core import distributed
from llm_core.data.loader import IGNORE
from llm_core.evaluation.metrics import loss_fn

PICKS = ("acc", "acc_norm", "acc_norm_tokens")


def _preprocess(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def item_text(item: dict) -> tuple[str, list[str]]:
    """(context, endings) as scored: the harness's preprocessing for official items, the text itself otherwise."""
    if str(item.get("source_id", "")).startswith("synthetic") or not item.get("activity_label"):
        return item["ctx"], [e.strip() for e in item["endings"]]
    ctx = item["ctx_a"] + " " + item["ctx_b"].capitalize()
    return _preprocess(item["activity_label"] + ": " + ctx), [_preprocess(e) for e in item["endings"]]


def item_rows(item: dict, tokenizer, max_len: int) -> tuple[list[list[int]], list[int], list[int]]:
    """Token rows (context + ending) for each ending, the index where the ending starts, and its length in chars."""
    context, endings = item_text(item)
    ctx = [tokenizer.bos_id] + tokenizer.encode(context)
    rows, starts, chars = [], [], []
    for ending in endings:
        end = tokenizer.encode(" " + ending)
        row = ctx + end
        if len(row) > max_len:  # keep the ending whole, drop the oldest context
            row = row[-max_len:]
        rows.append(row)
        starts.append(len(row) - len(end))
        chars.append(max(1, len(ending)))
    return rows, starts, chars


def picks(scores: list[tuple[float, int, int]]) -> dict[str, int]:
    """The ending each convention picks from (total loss, tokens, characters) per ending."""
    n = range(len(scores))
    return {"acc": min(n, key=lambda j: scores[j][0]),
            "acc_norm": min(n, key=lambda j: scores[j][0] / scores[j][2]),
            "acc_norm_tokens": min(n, key=lambda j: scores[j][0] / max(1, scores[j][1]))}


@torch.no_grad()
def score_items(model, items: Iterable[dict], tokenizer, batch_size: int = 32,
                ctx: distributed.Context | None = None) -> dict:
    """acc, acc_norm, acc_norm_tokens and num_items; with several ranks each scores every world-th item."""
    ctx = ctx or distributed.Context()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    items = list(items)
    mine = items[ctx.rank::ctx.world]
    totals = torch.zeros(len(PICKS) + 1, dtype=torch.float64, device=device)  # one count per pick, then items
    pending: list[tuple[list[int], int, int, int]] = []  # (row, start, item, chars)
    scores: dict[int, list[tuple[float, int, int]]] = {}

    def run(batch):
        width = max(len(r) for r, *_ in batch)
        x = torch.zeros(len(batch), width - 1, dtype=torch.long)
        y = torch.full((len(batch), width - 1), IGNORE, dtype=torch.long)
        for i, (row, start, *_rest) in enumerate(batch):
            t = torch.tensor(row)
            x[i, :len(row) - 1] = t[:-1]
            y[i, start - 1:len(row) - 1] = t[start:]  # targets: the ending's tokens only
        losses = loss_fn(model(x.to(device)), y.to(device), reduction="none").view(len(batch), -1)
        counts = (y != IGNORE).sum(1)
        for i, (_, _, item_idx, chars) in enumerate(batch):
            scores.setdefault(item_idx, []).append((losses[i].sum().item(), int(counts[i]), chars))

    for idx, item in enumerate(mine):
        rows, starts, chars = item_rows(item, tokenizer, model.cfg.max_seq_len)
        pending.extend((r, s, idx, c) for r, s, c in zip(rows, starts, chars))
        if len(pending) >= batch_size:
            run(pending)
            pending = []
    if pending:
        run(pending)
    for idx, item in enumerate(mine):
        chosen = picks(scores[idx])
        for k, name in enumerate(PICKS):
            totals[k] += int(chosen[name] == item["label"])
        totals[-1] += 1
    distributed.all_reduce_sum(totals, ctx)
    model.train(was_training)
    n = int(totals[-1].item())
    if n == 0:
        raise ValueError("no HellaSwag items to score; check data.hellaswag and eval.max_items")
    return {**{name: totals[k].item() / n for k, name in enumerate(PICKS)}, "num_items": n}
