import csv
import json

import numpy as np
import pytest
import torch

from llm_core.config import ParallelConfig, ParamsError
from llm_core.model.io import load_model
from llm_core.training import checkpoint
from llm_core.training.loop import NonFiniteError, train
from tests.helpers import Crash, die_at_batch, tiny_model_config
from tests.helpers import stream_job as job  # the learnable stream
from tests.helpers import train_config as cfg


def final_weights(path):
    return load_model(path).state_dict()


def test_loss_goes_down_and_outputs_exist(tmp_path):
    res = train(tiny_model_config(), cfg(steps=30, eval_every=30), ParallelConfig(), job(tmp_path))
    assert res["steps"] == 30 and res["tokens"] == 30 * 4 * 32
    assert res["val_loss"] < np.log(512) - 1.0  # well below uniform guessing
    assert res["val_bpb"] == pytest.approx(res["val_loss"] / np.log(2), rel=1e-6)  # 1 byte per token here
    assert (tmp_path / "run" / "model.safetensors").exists()
    assert (tmp_path / "run_live" / "plots" / "metrics" / "train" / "loss.tsv").exists()


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_killed_run_resumes_to_identical_weights(tmp_path, monkeypatch, optimizer):
    c = cfg(optimizer=optimizer)
    train(tiny_model_config(), c, ParallelConfig(), job(tmp_path, "ref"))
    # second run: dies on the 5th batch, after the step-3 checkpoint
    die_at_batch(monkeypatch, 5, Crash)
    with pytest.raises(Crash):
        train(tiny_model_config(), c, ParallelConfig(), job(tmp_path, "killed"))
    monkeypatch.undo()
    assert checkpoint.latest_checkpoint(tmp_path / "killed" / "checkpoints").name == "step_0000003"
    train(tiny_model_config(), c, ParallelConfig(), job(tmp_path, "killed"))
    a, b = final_weights(tmp_path / "ref"), final_weights(tmp_path / "killed")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the curve continues rather than restarting
    rows = list(csv.DictReader(open(tmp_path / "killed_live/plots/metrics/train/loss.tsv"), delimiter="\t"))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))


def test_changed_config_starts_fresh_and_finished_run_is_not_resumed(tmp_path):
    train(tiny_model_config(), cfg(), ParallelConfig(), job(tmp_path))
    res = train(tiny_model_config(), cfg(lr=1e-3), ParallelConfig(), job(tmp_path))
    assert res["steps"] == 8
    state = checkpoint.read_state(checkpoint.latest_checkpoint(tmp_path / "run" / "checkpoints"))
    ref = checkpoint.read_state(checkpoint.latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert state["fingerprint"] == ref["fingerprint"]
    info = json.loads((tmp_path / "run" / "train_info.json").read_text())
    assert info["steps"] == 8


def test_grad_accum_matches_bigger_batch(tmp_path):
    a = train(tiny_model_config(), cfg(steps=3, batch_size=4, grad_accum=2, eval_every=100), ParallelConfig(),
              job(tmp_path, "accum"))
    b = train(tiny_model_config(), cfg(steps=3, batch_size=8, grad_accum=1, eval_every=100), ParallelConfig(),
              job(tmp_path, "big"))
    assert a["tokens"] == b["tokens"]
    # the same tokens in a different grouping: close, not identical (rows are split differently across steps)
    assert abs(a["train_loss"] - b["train_loss"]) < 0.5


def test_nonfinite_halt_keeps_checkpoint_and_skip_counts(tmp_path, monkeypatch):
    import llm_core.training.loop as T

    real = T.loss_fn
    calls = {"n": 0}

    def poisoned(logits, targets, reduction="mean"):
        out = real(logits, targets, reduction)
        if logits.requires_grad:
            calls["n"] += 1
            if calls["n"] == 5:
                return out * float("nan")
        return out

    monkeypatch.setattr(T, "loss_fn", poisoned)
    with pytest.raises(NonFiniteError, match="non-finite loss or grad norm at step 4"):
        train(tiny_model_config(), cfg(), ParallelConfig(), job(tmp_path, "halt"))
    assert checkpoint.latest_checkpoint(tmp_path / "halt" / "checkpoints").name == "step_0000003"
    calls["n"] = 0
    res = train(tiny_model_config(), cfg(on_nonfinite="skip"), ParallelConfig(), job(tmp_path, "skip"))
    assert res["skipped_steps"] == 1 and np.isfinite(res["train_loss"])


def test_global_batch_tokens_derives_grad_accum(tmp_path):
    c = cfg(steps=2, batch_size=4, grad_accum=1, global_batch_tokens=4 * 32 * 3, eval_every=100)
    assert c.accum_steps(1, "pretrain") == 3
    res = train(tiny_model_config(), c, ParallelConfig(), job(tmp_path))
    assert res["tokens"] == 2 * 4 * 32 * 3
    assert cfg(grad_accum=5).accum_steps(2, "pretrain") == 5  # 0 = grad_accum as given
    with pytest.raises(ParamsError, match=r"pretrain\.global_batch_tokens \(256\) must be a multiple of "
                                          r"pretrain\.batch_size x pretrain\.seq_len x ranks = 4 x 32 x 4 = 512"):
        cfg(global_batch_tokens=256).accum_steps(4, "pretrain")
    with pytest.raises(ParamsError, match=r"sft\.global_batch_tokens \(100\) must be a multiple"):
        cfg(global_batch_tokens=100).validate("sft")


def test_metrics_carry_mfu_with_a_given_peak(tmp_path):
    res = train(tiny_model_config(), cfg(steps=2, eval_every=100, peak_flops=1e12), ParallelConfig(), job(tmp_path))
    assert res["runtime"]["tokens_per_sec"] > 0 and 0 < res["runtime"]["mfu"] < 1
    rows = list(csv.DictReader(open(tmp_path / "run_live/plots/metrics/train/mfu.tsv"), delimiter="\t"))
    assert len(rows) == 2


def test_every_model_folder_says_whether_it_is_a_chat_model(tmp_path):
    """The final model, best/ and each checkpoint carry model_info.json: llm-chat reads it to pick chat mode or
    plain continuation, whichever of the run's folders it is pointed at."""
    from llm_core.inference.loading import is_chat_model
    from llm_core.model.io import read_info

    c = cfg(steps=3, eval_every=3, checkpoint_every=3)
    train(tiny_model_config(), c, ParallelConfig(), job(tmp_path, "chats", chat=True))
    train(tiny_model_config(), c, ParallelConfig(), job(tmp_path, "text"))
    for run, chat in (("chats", True), ("text", False)):
        for folder in ("", "best", "checkpoints/step_0000003"):
            path = tmp_path / run / folder
            assert read_info(path) == {"chat": chat, "stage": "pretrain"}, path
            assert is_chat_model(path) is chat
