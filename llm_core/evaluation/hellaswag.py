"""HellaSwag-style multiple choice, scored in the two conventions that published figures use.

lm-evaluation-harness (`acc`, `acc_norm`; `acc_norm` is the figure of published HellaSwag tables):
- Official items get the harness's preprocessing: context = activity_label + ": " + ctx_a + " " +
  ctx_b.capitalize(), then " [title]" -> ". ", other [tags] dropped, double spaces collapsed; the endings likewise.
  Items of the built-in world are plain story text and are used as they are.
- Each ending is scored as the continuation " " + ending. Whitespace that ends the context moves to the front of
  the continuation, as the harness does for every request: "... her [step]" preprocesses to "... her ", which is
  scored as "... her" + "  ending".
- Tokens: <|bos|> + context; the continuation's tokens are those that tokenizing <|bos|> + context + continuation
  adds after the context's own (the harness splits the whole string the same way). The exported tokenizer adds
  <|bos|>, so the harness's `hf` model sees exactly these rows.
- `acc`: the ending with the highest total log-likelihood; `acc_norm`: the highest log-likelihood per character of
  the (preprocessed) ending.

build-nanogpt (`acc_norm_tokens`, its `acc_norm`; GPT-2 124M: 0.2955 on the 10,042 validation items):
- The raw `ctx` field and " " + each raw ending, tokenized apart, with no <|bos|>: build-nanogpt feeds GPT-2 the
  bare context although GPT-2's and its own training documents open with <|endoftext|>; ours do likewise with
  <|bos|>, and we score as it does so that the figures compare.
- `acc_norm_tokens`: the ending with the lowest mean loss per token.

Rows longer than the model's context keep their last max_seq_len + 1 tokens (`loglik.py`); build-nanogpt never
needs to cut (GPT-2's 1024 tokens hold every item). `evaluate` also returns one record per item (context, endings,
log-likelihoods, lengths, the pick of each convention, label) for metrics/hellaswag_items.jsonl.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from llm_core import distributed
from llm_core.evaluation.loglik import Request, loglikelihoods

PICKS = ("acc", "acc_norm", "acc_norm_tokens")


def _preprocess(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def item_text(item: dict) -> tuple[str, list[str]]:
    """(context, endings) in the harness convention: its preprocessing for official items, the text itself otherwise."""
    if str(item.get("source_id", "")).startswith("synthetic") or not item.get("activity_label"):
        return item["ctx"], [e.strip() for e in item["endings"]]
    ctx = item["ctx_a"] + " " + item["ctx_b"].capitalize()
    return _preprocess(item["activity_label"] + ": " + ctx), [_preprocess(e) for e in item["endings"]]


def harness_request(context: str, continuation: str, tokenizer) -> Request:
    """Tokens of a (context, continuation) pair as lm-evaluation-harness makes them for a causal model."""
    spaces = len(context) - len(context.rstrip())
    if spaces:  # trailing whitespace belongs to the continuation: "her " + " x" -> "her" + "  x"
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    ctx = [tokenizer.bos_id] + tokenizer.encode(context)
    whole = [tokenizer.bos_id] + tokenizer.encode(context + continuation)
    return ctx, whole[len(ctx):]


def nanogpt_request(context: str, ending: str, tokenizer) -> Request:
    """Tokens as build-nanogpt's render_example makes them: raw context, then " " + ending encoded on its own."""
    ctx = tokenizer.encode(context) or [tokenizer.bos_id]  # an empty context still needs a token to predict from
    return ctx, tokenizer.encode(" " + ending)


def picks(logliks: list[float], chars: list[int], mean_losses: list[float]) -> dict[str, int]:
    """The ending each convention picks (the first one on a tie, as numpy's argmax and torch's argmin do)."""
    n = range(len(logliks))
    return {"acc": max(n, key=lambda j: logliks[j]),
            "acc_norm": max(n, key=lambda j: logliks[j] / chars[j]),
            "acc_norm_tokens": min(n, key=lambda j: mean_losses[j])}


def _requests(item: dict, tokenizer) -> tuple[str, list[str], list[Request]]:
    """The harness's requests for every ending, then build-nanogpt's."""
    context, endings = item_text(item)
    reqs = [harness_request(context, " " + e, tokenizer) for e in endings]
    reqs += [nanogpt_request(item["ctx"], e, tokenizer) for e in item["endings"]]
    return context, endings, reqs


def evaluate(model, items: Iterable[dict], tokenizer, batch_size: int = 32,
             ctx: distributed.Context | None = None) -> tuple[dict, list[dict]]:
    """(metrics, records): acc, acc_norm, acc_norm_tokens and num_items, and one record per item (on rank 0; with
    several ranks each scores every world-th item)."""
    ctx = ctx or distributed.Context()
    items = list(items)
    mine = list(range(ctx.rank, len(items), ctx.world))
    built = [_requests(items[i], tokenizer) for i in mine]
    scores = iter(loglikelihoods(model, [r for *_, reqs in built for r in reqs], batch_size))
    totals = torch.zeros(len(PICKS) + 1, dtype=torch.float64)  # one count per pick, then items
    records = []
    for i, (context, endings, reqs) in zip(mine, built):
        item, n = items[i], len(reqs) // 2
        harness = [next(scores) for _ in range(n)]
        nanogpt = [next(scores) for _ in range(n)]
        rec = {"item": i, "ind": item.get("ind"), "source_id": item.get("source_id", ""),
               "activity_label": item.get("activity_label", ""), "context": context, "endings": endings,
               "label": int(item["label"]), "loglik": [ll for ll, _ in harness],
               "chars": [max(1, len(e)) for e in endings], "tokens": [t for _, t in harness],
               "mean_loss_tokens": [-ll / t for ll, t in nanogpt], "tokens_nanogpt": [t for _, t in nanogpt]}
        rec["pick"] = picks(rec["loglik"], rec["chars"], rec["mean_loss_tokens"])
        for k, name in enumerate(PICKS):
            totals[k] += int(rec["pick"][name] == rec["label"])
        totals[-1] += 1
        records.append(rec)
    totals = distributed.all_reduce_sum(totals.to(ctx.device), ctx).cpu()
    if ctx.distributed:
        records = sorted((r for part in distributed.gather_objects(records, ctx) for r in part),
                         key=lambda r: r["item"])
    n = int(totals[-1].item())
    if n == 0:
        raise ValueError("no HellaSwag items to score; check data.hellaswag and eval.max_items")
    return {**{name: totals[k].item() / n for k, name in enumerate(PICKS)}, "num_items": n}, records


def score_items(model, items: Iterable[dict], tokenizer, batch_size: int = 32,
                ctx: distributed.Context | None = None) -> dict:
    """acc, acc_norm, acc_norm_tokens and num_items (the metrics of `evaluate`)."""
    return evaluate(model, items, tokenizer, batch_size, ctx)[0]
