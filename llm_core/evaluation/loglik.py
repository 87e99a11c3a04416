"""Log-likelihood of a continuation given a context: the one scorer behind HellaSwag's picks and the text evaluation.

It follows lm-evaluation-harness's `_loglikelihood_tokens` for causal models, so that figures agree with the
harness's to float precision:
- a request is (context tokens, continuation tokens); the model reads context + continuation minus the last token;
- a row longer than the model's context keeps its last `max_seq_len + 1` tokens: `max_seq_len` model inputs, the
  full window (cutting to `max_seq_len` tokens would leave one input unused and differ from the harness);
- the result is the sum of the continuation tokens' log-probabilities and their count.
Rows of a batch are right-padded; causal attention keeps padding out of every scored position.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llm_core.data.loader import IGNORE
from llm_core.evaluation.metrics import loss_fn

Request = tuple[list[int], list[int]]  # (context tokens, continuation tokens)


def model_row(context: list[int], continuation: list[int], max_len: int) -> list[int]:
    """The tokens of one request as the model sees them: context + continuation, at most `max_len` + 1 of them (the
    last one is only a target)."""
    if not continuation:
        raise ValueError("a log-likelihood request needs at least one continuation token")
    if len(continuation) > max_len:
        raise ValueError(f"a continuation of {len(continuation)} tokens does not fit the model's context "
                         f"({max_len}); score it in windows")
    if not context:
        raise ValueError("a log-likelihood request needs at least one context token (e.g. <|bos|>)")
    return (context + continuation)[-(max_len + 1):]


@torch.no_grad()
def loglikelihoods(model, requests: Sequence[Request], batch_size: int = 32) -> list[tuple[float, int]]:
    """(sum of log-probs in nats, token count) of each request's continuation, in the order of `requests`."""
    device = next(model.parameters()).device
    max_len = model.cfg.max_seq_len
    was_training = model.training
    model.eval()
    rows = [model_row(ctx, cont, max_len) for ctx, cont in requests]
    # longest first: rows of similar length share a batch, so little padding is computed
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = len(rows[batch[0]]) - 1
        x = torch.zeros(len(batch), width, dtype=torch.long)
        y = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        for b, i in enumerate(batch):
            row, n = torch.tensor(rows[i]), len(requests[i][1])
            x[b, :len(row) - 1] = row[:-1]
            y[b, len(row) - 1 - n:len(row) - 1] = row[-n:]  # targets: the continuation's tokens only
        nats = loss_fn(model(x.to(device)), y.to(device), reduction="none").view(len(batch), width)
        for total, i in zip(nats.double().sum(1).tolist(), batch):
            out[i] = (-total, len(requests[i][1]))
    model.train(was_training)
    return out
