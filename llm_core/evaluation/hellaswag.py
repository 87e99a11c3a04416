"""HellaSwag-style multiple choice: item loading and scoring by the model's loss on each ending.

For every item the context (after <|bos|>) is followed by each candidate ending (with its leading space, as in
the official evaluation). `acc` picks the ending with the lowest total loss, `acc_norm` the lowest mean loss per
token, which removes the bias toward short endings.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from llm_core import distributed
from llm_core.data.loader import IGNORE
from llm_core.evaluation.metrics import loss_fn


def item_rows(item: dict, tokenizer, max_len: int) -> tuple[list[list[int]], list[int]]:
    """Token rows (context + ending) for each ending and the index where the ending starts."""
    ctx = [tokenizer.bos_id] + tokenizer.encode(item["ctx"])
    rows, starts = [], []
    for ending in item["endings"]:
        end = tokenizer.encode(" " + ending.strip())
        row = ctx + end
        if len(row) > max_len:  # keep the ending whole, drop the oldest context
            row = row[-max_len:]
        rows.append(row)
        starts.append(len(row) - len(end))
    return rows, starts


@torch.no_grad()
def score_items(model, items: Iterable[dict], tokenizer, batch_size: int = 32,
                ctx: distributed.Context | None = None) -> dict:
    """acc, acc_norm and num_items over the items; with several ranks each scores every world-th item."""
    ctx = ctx or distributed.Context()
    device = next(model.parameters()).device
    model.eval()
    items = list(items)
    mine = items[ctx.rank::ctx.world]
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # correct, correct_norm, count
    pending: list[tuple[list[int], int, int, int]] = []  # (row, start, item, ending)
    scores: dict[int, list[tuple[float, float]]] = {}

    def run(batch):
        width = max(len(r) for r, *_ in batch)
        x = torch.zeros(len(batch), width - 1, dtype=torch.long)
        y = torch.full((len(batch), width - 1), IGNORE, dtype=torch.long)
        for i, (row, start, *_rest) in enumerate(batch):
            t = torch.tensor(row)
            x[i, :len(row) - 1] = t[:-1]
            y[i, start - 1:len(row) - 1] = t[start:]  # targets: the ending's tokens only
        losses = loss_fn(model(x.to(device)), y.to(device), reduction="none").view(len(batch), -1)
        counts = (y != IGNORE).sum(1).to(device)
        for i, (_, _, item_idx, _) in enumerate(batch):
            total = losses[i].sum().item()
            scores.setdefault(item_idx, []).append((total, total / max(1, counts[i].item())))

    for idx, item in enumerate(mine):
        rows, starts = item_rows(item, tokenizer, model.cfg.max_seq_len)
        pending.extend((r, s, idx, j) for j, (r, s) in enumerate(zip(rows, starts)))
        if len(pending) >= batch_size:
            run(pending)
            pending = []
    if pending:
        run(pending)
    for idx, item in enumerate(mine):
        s = scores[idx]
        totals[0] += int(min(range(len(s)), key=lambda j: s[j][0]) == item["label"])
        totals[1] += int(min(range(len(s)), key=lambda j: s[j][1]) == item["label"])
        totals[2] += 1
    distributed.all_reduce_sum(totals, ctx)
    n = int(totals[2].item())
    if n == 0:
        raise ValueError("no HellaSwag items to score; check data.hellaswag and eval.max_items")
    return {"acc": totals[0].item() / n, "acc_norm": totals[1].item() / n, "num_items": n}
