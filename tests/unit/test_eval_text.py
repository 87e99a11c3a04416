"""eval_text's scoring: rolling windows over whole documents and the harness's definitions of its metrics.
(tests/parity/test_lm_eval.py compares both with lm-evaluation-harness itself.)"""

import math

import pytest
import torch
import torch.nn.functional as F

from llm_core.evaluation import text
from llm_core.model.transformer import Transformer
from tests.helpers import tiny_model_config


@pytest.mark.parametrize("n,max_len", [(1, 4), (4, 4), (5, 4), (9, 4), (23, 5), (40, 1)])
def test_windows_predict_every_token_once_within_the_context(n, max_len):
    tokens = list(range(100, 100 + n))
    windows = text.rolling_windows(tokens, 7, max_len)
    assert [t for _, cont in windows for t in cont] == tokens
    assert windows[0][0] == [7]  # the document starts from <|bos|>
    for ctx, cont in windows:
        row = ctx + cont
        assert len(row) <= max_len + 1
        if ctx != [7]:
            assert row == tokens[tokens.index(row[0]):tokens.index(row[-1]) + 1]  # the tokens just before
    assert all(len(ctx) + len(cont) == max_len + 1 for ctx, cont in windows[1:])  # later windows read a full context
    assert text.rolling_windows([], 7, max_len) == []


def test_a_short_document_is_one_forward_pass(tokenizer):
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(vocab_size=tokenizer.vocab_size, max_seq_len=64)).eval()
    doc = "Lily had a red ball. She liked it."
    ids = tokenizer.encode(doc)
    row = torch.tensor([[tokenizer.bos_id] + ids])
    with torch.no_grad():
        expected = -F.cross_entropy(model(row[:, :-1])[0], row[0, 1:], reduction="sum").item()
    ((ll, n),) = text.document_logliks(model, [doc], tokenizer)
    assert n == len(ids) and ll == pytest.approx(expected, abs=1e-4)


class Uniform(torch.nn.Module):
    """Every token has probability 1/vocab: the log-likelihood of a document is -tokens * ln(vocab)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.zeros(*x.shape, self.cfg.vocab_size)


def test_metrics_follow_the_harness_definitions(tokenizer):
    model = Uniform(tiny_model_config(vocab_size=tokenizer.vocab_size, max_seq_len=8))
    docs = ["Lily had a red ball.  She liked it.", "Tom went to the park.\nHe saw a dog. Café!"]
    res = text.evaluate(model, docs, tokenizer, batch_size=3)
    tokens = sum(len(tokenizer.encode(d)) for d in docs)
    nats = tokens * math.log(tokenizer.vocab_size)
    n_bytes = sum(len(d.encode()) for d in docs)
    words = 8 + 10  # re.split(r"\s+"): the double space and the newline are one separator each
    assert res["num_tokens"] == tokens and res["num_bytes"] == n_bytes and res["num_words"] == words
    assert res["num_docs"] == 2
    assert res["bits_per_byte"] == pytest.approx(nats / n_bytes / math.log(2))
    assert res["byte_perplexity"] == pytest.approx(math.exp(nats / n_bytes))
    assert res["word_perplexity"] == pytest.approx(math.exp(nats / words))
    assert res["token_loss"] == pytest.approx(math.log(tokenizer.vocab_size))


def test_limits_and_an_empty_text(tokenizer):
    docs = ["aaaa", "bbbb", "cccc", "dddd"]
    assert list(text.limit(docs, max_docs=2)) == ["aaaa", "bbbb"]
    assert list(text.limit(docs, max_bytes=5)) == ["aaaa", "bbbb"]  # stops after the document that reaches it
    assert list(text.limit(docs)) == docs
    model = Uniform(tiny_model_config(vocab_size=tokenizer.vocab_size, max_seq_len=8))
    with pytest.raises(ValueError, match="evaluation text is empty.*eval.text"):
        text.evaluate(model, [], tokenizer)
