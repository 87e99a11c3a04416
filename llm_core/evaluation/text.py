"""How well a model predicts a text corpus: bits per byte and the perplexities of lm-evaluation-harness's wikitext.

Each document is scored whole, in the harness's rolling windows (`loglikelihood_rolling`, context length 1): the
first window predicts the document's first `max_seq_len` tokens from <|bos|>; each next window predicts the next
`max_seq_len` tokens from the one token before them, and the last, shorter window fills its unused room with the
tokens before it. Every token of the document is predicted exactly once and no window reads more than
`max_seq_len` tokens. <|bos|> opens every document, as in the token shards, and is only read, never scored (the
harness's `hf` model does the same with `add_bos_token=False`; with its default, the exported tokenizer adds
<|bos|> to the text, which the harness then scores after its own <|bos|> prefix).

Over the corpus, with LL the summed log-likelihood (nats) of all documents:
- bits_per_byte = -LL / (ln 2 * UTF-8 bytes); byte_perplexity = exp(-LL / bytes) = 2 ** bits_per_byte
- word_perplexity = exp(-LL / words), words = len(re.split(r"\\s+", document)) summed over documents
- token_loss = -LL / tokens (nats per scored token; tokens depend on the tokenizer, bytes and words do not)
bits_per_byte is the figure that compares models with different tokenizers.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Iterator

import torch

from llm_core import distributed
from llm_core.evaluation.loglik import Request, loglikelihoods

DOCS_PER_CHUNK = 256  # documents tokenized and scored together: streams a corpus of any size


def rolling_windows(tokens: list[int], prefix: int, max_len: int) -> list[Request]:
    """(context, continuation) pairs that predict every token of `tokens` once, each row at most max_len + 1 long."""
    windows = []
    done = 0
    while done < len(tokens):
        size = min(max_len, len(tokens) - done)
        end = done + size
        # the first window reads only the prefix; later ones read the tokens just before their own, up to the limit
        context = [prefix] if done == 0 else tokens[end - max_len - 1:done]
        windows.append((context, tokens[done:end]))
        done = end
    return windows


def count_words(text: str) -> int:
    """Words as the harness counts them for word_perplexity (an empty string or edge whitespace counts one)."""
    return len(re.split(r"\s+", text))


def document_logliks(model, texts: list[str], tokenizer, batch_size: int = 32) -> list[tuple[float, int]]:
    """(log-likelihood in nats, scored tokens) of each whole document."""
    max_len = model.cfg.max_seq_len
    per_doc = [rolling_windows(ids, tokenizer.bos_id, max_len) for ids in tokenizer.encode_batch(texts)]
    scores = iter(loglikelihoods(model, [w for doc in per_doc for w in doc], batch_size))
    out = []
    for doc in per_doc:
        parts = list(itertools.islice(scores, len(doc)))
        out.append((sum(ll for ll, _ in parts), sum(n for _, n in parts)))
    return out


def limit(texts: Iterable[str], max_docs: int = 0, max_bytes: int = 0) -> Iterator[str]:
    """The first `max_docs` documents, stopping after the one that reaches `max_bytes` (0 = no limit)."""
    seen = 0
    for i, text in enumerate(texts):
        if max_docs and i >= max_docs:
            return
        yield text
        seen += len(text.encode())
        if max_bytes and seen >= max_bytes:
            return


def evaluate(model, texts: Iterable[str], tokenizer, batch_size: int = 32,
             ctx: distributed.Context | None = None) -> dict:
    """bits_per_byte, byte_perplexity, word_perplexity, token_loss and the counts behind them; with several ranks
    each scores every world-th document and the sums are combined."""
    ctx = ctx or distributed.Context()
    sums = torch.zeros(5, dtype=torch.float64)  # nats, tokens, bytes, words, documents
    docs = (t for i, t in enumerate(texts) if i % ctx.world == ctx.rank)
    while chunk := list(itertools.islice(docs, DOCS_PER_CHUNK)):
        for text, (ll, n) in zip(chunk, document_logliks(model, chunk, tokenizer, batch_size)):
            sums += torch.tensor([-ll, n, len(text.encode()), count_words(text), 1], dtype=torch.float64)
    nats, tokens, n_bytes, words, n_docs = distributed.all_reduce_sum(sums.to(ctx.device), ctx).tolist()
    if not tokens:
        raise ValueError("the evaluation text is empty (no document has any text); check eval.text")
    return {"bits_per_byte": nats / (math.log(2) * n_bytes), "byte_perplexity": math.exp(nats / n_bytes),
            "word_perplexity": math.exp(min(nats / words, 700.0)), "token_loss": nats / tokens,
            "num_docs": int(n_docs), "num_tokens": int(tokens), "num_bytes": int(n_bytes), "num_words": int(words)}
