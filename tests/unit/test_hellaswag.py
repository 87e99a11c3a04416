import math

import pytest
import torch

from llm_core.evaluation import hellaswag
from llm_core.model.transformer import Transformer
from tests.helpers import tiny_model_config


class Rigged(torch.nn.Module):
    """Scores exactly what we tell it: the log-prob of token t is -cost[t] everywhere."""

    def __init__(self, cost, cfg):
        super().__init__()
        self.cfg = cfg
        self.cost = torch.tensor(cost, dtype=torch.float)
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        logp = torch.log_softmax(-self.cost, -1)
        return logp.expand(x.shape[0], x.shape[1], -1).clone()


class Tok:
    bos_id = 0

    def encode(self, text):
        return [int(w) for w in text.split()]


class Words:
    """One token per word: a=1, bb=2, cccc=3 (anything else 0)."""

    bos_id = 0
    ids = {"a": 1, "bb": 2, "cccc": 3}

    def encode(self, text):
        return [self.ids.get(w, 0) for w in text.split()]


def test_the_three_conventions_on_hand_made_items():
    """A context-free model with p(a)=0.35, p(bb)=0.25, p(cccc)=0.3, so the loss of a word is fixed:
    a 1.0498, bb 1.3863, cccc 1.2040 nats. By hand, per item (total / per character / per token):
      X ["a", "bb", "cccc cccc"], label 0: totals 1.050 1.386 2.408 -> 0 (right); per char 1.050 0.693 0.268 -> 2;
        per token 1.050 1.386 1.204 -> 0 (right)
      Y ["bb", "a", "cccc cccc cccc"], label 2: totals 1.386 1.050 3.612 -> 1; per char 0.693 1.050 0.258 -> 2
        (right); per token 1.386 1.050 1.204 -> 1
      Z ["cccc", "a a", "bb bb bb"], label 1: totals 1.204 2.100 4.159 -> 0; per char 0.301 0.700 0.520 -> 0;
        per token 1.204 1.050 1.386 -> 1 (right)
    so acc = 1/3 (X), acc_norm = 1/3 (Y), acc_norm_tokens = 2/3 (X, Z)."""
    import math

    cfg = tiny_model_config(vocab_size=4)
    p = [0.1, 0.35, 0.25, 0.3]
    model = Rigged([-math.log(q) for q in p], cfg)
    items = [{"ctx": "ctx", "endings": ["a", "bb", "cccc cccc"], "label": 0, "source_id": "synthetic-0"},
             {"ctx": "ctx", "endings": ["bb", "a", "cccc cccc cccc"], "label": 2, "source_id": "synthetic-1"},
             {"ctx": "ctx", "endings": ["cccc", "a a", "bb bb bb"], "label": 1, "source_id": "synthetic-2"}]
    res = hellaswag.score_items(model, items, Words(), batch_size=4)
    assert res == pytest.approx({"acc": 1 / 3, "acc_norm": 1 / 3, "acc_norm_tokens": 2 / 3, "num_items": 3})


def test_official_items_get_the_harness_preprocessing():
    item = {"activity_label": "Baking cookies", "ctx_a": "A woman [header] pours flour.", "ctx_b": "she",
            "ctx": "unused", "endings": ["mixes it [title] Stir well.", " adds  eggs. "], "label": 0,
            "source_id": "activitynet~v_x"}
    ctx, endings = hellaswag.item_text(item)
    assert ctx == "Baking cookies: A woman pours flour. She"
    assert endings == ["mixes it. Stir well.", "adds eggs."]
    synthetic = dict(item, source_id="synthetic-3-0", ctx="Lily had a kite. Lily")
    assert hellaswag.item_text(synthetic) == ("Lily had a kite. Lily", ["mixes it [title] Stir well.", "adds  eggs."])


def test_scores_equal_per_item_computation():
    model = Transformer(tiny_model_config(vocab_size=16)).eval()
    items = [{"ctx": "1 2 3", "endings": ["4 5", "6", "7 8 9", "10"], "label": i % 4} for i in range(6)]
    batched = hellaswag.score_items(model, items, Tok(), batch_size=5)
    single = hellaswag.score_items(model, items, Tok(), batch_size=1)
    assert batched == single


def test_no_items_is_an_error():
    with pytest.raises(ValueError, match="no HellaSwag items"):
        hellaswag.score_items(Transformer(tiny_model_config()), [], Tok())


def test_whitespace_ending_the_context_moves_into_the_continuation(tokenizer):
    """lm-evaluation-harness's rule: "... her [step]" preprocesses to "... her ", and the space is scored with the
    ending, not read as context."""
    item = {"activity_label": "Sports", "ctx_a": "Walk for five minutes so that her [step]", "ctx_b": "",
            "ctx": "Walk for five minutes so that her [step]", "endings": ["muscles are warm.", "bike is red."],
            "label": 0, "source_id": "wikihow~1"}
    context, endings = hellaswag.item_text(item)
    assert context == "Sports: Walk for five minutes so that her "
    ctx, cont = hellaswag.harness_request(context, " " + endings[0], tokenizer)
    assert ctx[0] == tokenizer.bos_id and tokenizer.decode(ctx[1:]) == "Sports: Walk for five minutes so that her"
    assert tokenizer.decode(cont) == "  muscles are warm."
    # no trailing whitespace: the continuation is " " + ending, and the context keeps all its tokens
    ctx, cont = hellaswag.harness_request("Lily had a", " cat.", tokenizer)
    assert tokenizer.decode(ctx[1:]) == "Lily had a" and tokenizer.decode(cont) == " cat."


def test_build_nanogpt_rows_are_raw_ctx_without_bos(tokenizer):
    ctx, cont = hellaswag.nanogpt_request("A man [header] sits.", "stands  up", tokenizer)
    assert ctx == tokenizer.encode("A man [header] sits.") and tokenizer.bos_id not in ctx
    assert cont == tokenizer.encode(" stands  up")


class Widths(torch.nn.Module):
    """A uniform model that records how many tokens each forward pass reads."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg, self.widths = cfg, []
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        self.widths.append(x.shape[1])
        return torch.zeros(*x.shape, self.cfg.vocab_size)


def test_a_row_past_the_context_reads_the_full_window():
    """The harness keeps the last max_seq_len + 1 tokens of context + ending: max_seq_len model inputs."""
    cfg = tiny_model_config(vocab_size=16, max_seq_len=8)
    model = Widths(cfg)
    item = {"ctx": " ".join(["1"] * 20), "endings": ["2 3", "4"], "label": 0}
    metrics, (rec,) = hellaswag.evaluate(model, [item], Tok(), batch_size=1)
    assert max(model.widths) == 8  # never more, and not one fewer
    assert rec["tokens"] == [2, 1] and rec["loglik"] == pytest.approx([-2 * math.log(16), -math.log(16)])


def test_records_hold_what_each_pick_was_made_from():
    model = Transformer(tiny_model_config(vocab_size=16)).eval()
    items = [{"ctx": "1 2 3", "endings": ["4 5", "6", "7 8 9", "10"], "label": i % 4, "ind": 50 + i}
             for i in range(5)]
    metrics, records = hellaswag.evaluate(model, items, Tok(), batch_size=3)
    assert [r["item"] for r in records] == list(range(5)) and [r["ind"] for r in records] == list(range(50, 55))
    for rec in records:
        assert rec["context"] == "1 2 3" and rec["endings"] == ["4 5", "6", "7 8 9", "10"]
        assert rec["chars"] == [3, 1, 5, 2] and rec["tokens"] == [2, 1, 3, 1] == rec["tokens_nanogpt"]
        assert rec["pick"] == hellaswag.picks(rec["loglik"], rec["chars"], rec["mean_loss_tokens"])
        assert rec["pick"]["acc"] == max(range(4), key=lambda j: rec["loglik"][j])
    for name in hellaswag.PICKS:
        assert metrics[name] == pytest.approx(sum(r["pick"][name] == r["label"] for r in records) / 5)
