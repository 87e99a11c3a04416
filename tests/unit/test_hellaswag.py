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


def test_acc_and_acc_norm_pick_different_endings():
    cfg = tiny_model_config(vocab_size=8)
    cost = [0, 1.0, 1.0, 1.0, 5.0, 0.5, 0.5, 0.5]
    model = Rigged(cost, cfg)
    # ending 0: one costly token (short, high mean); ending 1: three cheap tokens (long, low mean)
    item = {"ctx": "1 2", "endings": ["4", "5 6 7 5 6 7 5 6 7 5 6 7"], "label": 1}
    res = hellaswag.score_items(model, [item], Tok(), batch_size=2)
    assert res == {"acc": 0.0, "acc_norm": 1.0, "num_items": 1}


def test_scores_equal_per_item_computation():
    model = Transformer(tiny_model_config(vocab_size=16)).eval()
    items = [{"ctx": "1 2 3", "endings": ["4 5", "6", "7 8 9", "10"], "label": i % 4} for i in range(6)]
    batched = hellaswag.score_items(model, items, Tok(), batch_size=5)
    single = hellaswag.score_items(model, items, Tok(), batch_size=1)
    assert batched == single


def test_no_items_is_an_error():
    with pytest.raises(ValueError, match="no HellaSwag items"):
        hellaswag.score_items(Transformer(tiny_model_config()), [], Tok())
