"""The training loop with MoE, recomputation and dropout: balancing, exact resume, expert load in curves/metrics."""

import csv

import pytest
import torch

from llm_core.config import ParallelConfig
from llm_core.model.io import load_model, write_model
from llm_core.model.transformer import Transformer
from llm_core.training import checkpoint
from llm_core.training.loop import train
from tests.helpers import Crash, die_at_batch, tiny_model_config
from tests.helpers import stream_job as job
from tests.helpers import train_config as cfg

MOE = dict(ffn="moe", n_experts=8, top_k=2, n_shared_experts=1, expert_hidden=32)


def skewed_start(tmp_path, model_cfg):
    """A model whose routers send most tokens to experts 0 and 1 (their rows scaled up: extreme scores)."""
    torch.manual_seed(0)
    model = Transformer(model_cfg)
    with torch.no_grad():
        for _, moe in model.moe_layers():
            moe.router.weight[:2] *= 5.0
    write_model(tmp_path / "skewed", model)
    return tmp_path / "skewed"


def load_curve(tmp_path, name, layer):
    rows = csv.DictReader(open(tmp_path / f"{name}_live/plots/metrics/moe/load_max_mean_layer{layer}.tsv"),
                          delimiter="\t")
    return [float(r[f"load_max_mean_layer{layer}"]) for r in rows]


def test_loss_free_balancing_evens_out_a_skewed_router(tmp_path):
    # the reported balance is over the last 50 steps (the validation interval): 50 x 8 x 32 tokens x 2 choices
    c = cfg(steps=200, batch_size=8, eval_every=50, checkpoint_every=200, lr=1e-3, optimizer="adamw", threads=1)
    results = {}
    for rate in (0.0, 0.01):
        model_cfg = tiny_model_config(d_model=32, n_heads=2, n_kv_heads=1, bias_update_rate=rate, **MOE)
        start = skewed_start(tmp_path, model_cfg)
        name = f"rate{rate}"
        results[rate] = train(model_cfg, c, ParallelConfig(), job(tmp_path, name, init_from=start))
        first = load_curve(tmp_path, name, 0)[0]
        assert first > 1.8, first  # the start is really skewed
    assert results[0.01]["moe_load_max_mean"] < 1.3, results[0.01]
    assert results[0.0]["moe_load_max_mean"] > 1.8, results[0.0]  # without the bias it stays skewed
    bias = load_model(tmp_path / "rate0.01").state_dict()["layers.0.ffn.router.expert_bias"]
    # only differences between biases change the choice: the over-used experts ended below every other one
    assert bias[:2].max() < bias[2:].min()
    assert results[0.01]["num_params_active"] < results[0.01]["num_params"]


@pytest.mark.parametrize("model_kw,train_kw", [
    (dict(MOE, attention_type="mla"), dict(activation_checkpointing="every_k")),
    (dict(dropout=0.1), {}),
], ids=["moe-mla-recompute", "dropout"])
def test_killed_run_resumes_to_identical_weights(tmp_path, monkeypatch, model_kw, train_kw):
    model_cfg = tiny_model_config(bias_update_rate=0.01, **model_kw)
    c = cfg(optimizer="muon", **train_kw)
    train(model_cfg, c, ParallelConfig(), job(tmp_path, "ref"))
    die_at_batch(monkeypatch, 5, Crash)
    with pytest.raises(Crash):
        train(model_cfg, c, ParallelConfig(), job(tmp_path, "killed"))
    monkeypatch.undo()
    ckpt = checkpoint.latest_checkpoint(tmp_path / "killed" / "checkpoints")
    assert ckpt.name == "step_0000003"
    if "ffn" in model_kw:  # the balancing bias is part of the checkpoint
        assert checkpoint.load_checkpoint(ckpt)["weights"]["layers.1.ffn.router.expert_bias"].abs().sum() > 0
    train(model_cfg, c, ParallelConfig(), job(tmp_path, "killed"))
    a, b = load_model(tmp_path / "ref").state_dict(), load_model(tmp_path / "killed").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
