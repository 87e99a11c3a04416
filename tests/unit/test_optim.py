import math

import pytest
import torch

from llm_core.config import TrainConfig
from llm_core.model.transformer import Transformer
from llm_core.training import optim
from llm_core.training.muon import Muon
from tests.helpers import tiny_model_config


def test_groups_cover_each_parameter_once_and_decay_only_matrices():
    model = Transformer(tiny_model_config())
    hidden, _, embed, flat = optim.param_groups(model, 0.1)
    ids = [id(p) for p in hidden + embed + flat]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert all(p.ndim == 2 for p in hidden) and all(p.ndim == 1 for p in flat)
    (opt,) = optim.build_optimizers(model, TrainConfig(weight_decay=0.1), "cpu")
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert all(decays[id(p)] == 0.1 for p in hidden)
    assert all(decays[id(p)] == 0.0 for p in embed + flat)


def test_muon_takes_hidden_matrices():
    model = Transformer(tiny_model_config())
    muon, adam = optim.build_optimizers(model, TrainConfig(optimizer="muon"), "cpu")
    assert isinstance(muon, Muon) and isinstance(adam, torch.optim.AdamW)
    hidden, _, embed, flat = optim.param_groups(model, 0.1)
    assert {id(p) for g in muon.param_groups for p in g["params"]} == {id(p) for p in hidden}
    x = torch.randint(0, 512, (2, 16))
    model(x).sum().backward()
    before = model.layers[0].attn.wq.weight.clone()
    for o in (muon, adam):
        o.step()
    assert not torch.equal(before, model.layers[0].attn.wq.weight)


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_schedules(schedule):
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1, schedule=schedule)
    f = [optim.lr_factor(s, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert max(f) == pytest.approx(1.0)
    if schedule == "constant":
        assert f[-1] == 1.0
    else:
        assert f[-1] == pytest.approx(0.1, abs=0.02) and all(a >= b - 1e-12 for a, b in zip(f[10:], f[11:]))
    if schedule == "cosine":
        progress = (54 - 10) / (99 - 10)
        assert optim.lr_factor(54, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    if schedule == "wsd":
        assert f[79] == 1.0


def test_set_lr_applies_factor():
    model = Transformer(tiny_model_config())
    opts = optim.build_optimizers(model, TrainConfig(lr=0.01), "cpu")
    assert optim.set_lr(opts, 0.5) == pytest.approx(0.005)
    assert all(g["lr"] == pytest.approx(0.005) for o in opts for g in o.param_groups)
