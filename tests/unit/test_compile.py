"""torch.compile changes how training runs, never what it computes: a compiled run (inductor's generated code on the
CPU) follows the eager run's losses and ends with the same weights, to float round-off. `compile: auto` picks eager
on the CPU, where compiling the default model costs more time than it saves (bench/train_step.py --compile true
--baseline eager; bench/RESULTS.md)."""

import pytest
import torch

from llm_core.config import ParallelConfig
from llm_core.model.io import load_model
from llm_core.training.loop import Trainer, resolve_compile
from tests.helpers import stream_job, tiny_model_config, train_config


def _run(tmp_path, name, compile_):
    cfg = train_config(steps=4, eval_every=2, checkpoint_every=4, compile=compile_, optimizer="adamw")
    trainer = Trainer(tiny_model_config(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64), cfg,
                      ParallelConfig(), stream_job(tmp_path, name), quiet=True)
    losses = []
    while trainer.state["step"] < cfg.steps:
        losses.append(trainer.train_step()["train/loss"])
    return losses, trainer.model.state_dict()


def test_compiled_training_equals_eager(tmp_path):
    torch._dynamo.reset()
    eager_losses, eager_weights = _run(tmp_path, "eager", False)
    compiled_losses, compiled_weights = _run(tmp_path, "compiled", True)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    for name, w in eager_weights.items():
        torch.testing.assert_close(compiled_weights[name], w, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("device,expected", [("cpu", False), ("cuda", True)])
def test_compile_auto_is_eager_on_cpu(device, expected):
    assert resolve_compile("auto", torch.device(device)) is expected
    assert resolve_compile(True, torch.device(device)) is True
    assert resolve_compile(False, torch.device(device)) is False
