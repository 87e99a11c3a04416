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
