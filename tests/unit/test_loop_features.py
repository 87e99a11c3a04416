"""The training loop's contracts: one metric definition, fp16 loss scaling, bit-identical reruns, the fingerprint of
SFT's starting weights, best-of-run selection, early stopping and the epoch warning."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from llm_core.config import ParallelConfig
from llm_core.data.loader import IGNORE, DocRows
from llm_core.evaluation.metrics import TokenMetrics, loss_fn
from llm_core.model.io import load_model, write_model
from llm_core.model.transformer import Transformer
from llm_core.training import checkpoint
from llm_core.training.loop import Job, Trainer, train
from tests.helpers import STREAM, VAL, die_at_batch, tiny_model_config
from tests.helpers import stream_job as job  # the learnable stream
from tests.helpers import train_config as cfg


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# one definition of each metric


def test_token_metrics_by_hand_with_a_byte_table_that_has_zeros():
    # vocab of 4: id 0 is a special token (0 bytes), ids 1..3 are text of 1, 2 and 3 bytes
    token_bytes = torch.tensor([0, 1, 2, 3])
    logits = torch.log(torch.tensor([[[0.1, 0.6, 0.2, 0.1],     # target 1 (1 byte), argmax 1: right
                                      [0.7, 0.1, 0.1, 0.1],     # target 0 (special), argmax 0: right
                                      [0.25, 0.25, 0.4, 0.1],   # target 3 (3 bytes), argmax 2: wrong
                                      [0.25, 0.25, 0.25, 0.25]]]))  # IGNORE: not counted anywhere
    targets = torch.tensor([[1, 0, 3, IGNORE]])
    m = TokenMetrics(token_bytes=token_bytes)
    m.add(logits, targets)
    got = m.result()
    nats = [-math.log(0.6), -math.log(0.7), -math.log(0.1)]
    assert got["loss"] == pytest.approx(sum(nats) / 3)  # every target token, the special one included
    assert got["loss"] == pytest.approx(loss_fn(logits, targets).item())  # the quantity training minimises
    assert got["ppl"] == pytest.approx(math.exp(sum(nats) / 3))
    assert got["token_acc"] == pytest.approx(2 / 3)
    # bits per byte: text tokens only, in both sums (the special token has no bytes and its loss is left out)
    assert got["bpb"] == pytest.approx((nats[0] + nats[2]) / math.log(2) / (1 + 3))


def test_validation_metrics_reach_the_result_and_the_curves(tmp_path):
    res = train(tiny_model_config(), cfg(steps=4, eval_every=4), ParallelConfig(), job(tmp_path))
    assert {"val_loss", "val_ppl", "val_token_acc", "val_bpb"} <= set(res)
    assert res["val_ppl"] == pytest.approx(math.exp(res["val_loss"]))
    assert 0 <= res["val_token_acc"] <= 1
    for name in ("loss", "ppl", "token_acc", "bpb"):
        assert (tmp_path / f"run_live/plots/metrics/val/{name}.tsv").exists(), name


# --------------------------------------------------------------------------------------------------------------------
# fp16 loss scaling


def test_fp16_scales_the_loss_and_resumes_exactly(tmp_path, monkeypatch):
    c = cfg(precision="fp16", checkpoint_every=3, eval_every=100)
    scaled = []
    real_scale = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale",
                        lambda self, out: scaled.append(self.is_enabled()) or real_scale(self, out))
    ref = train(tiny_model_config(), c, ParallelConfig(), job(tmp_path, "ref"))
    assert scaled and all(scaled)  # every backward went through an enabled GradScaler
    blob = torch.load(tmp_path / "ref/checkpoints/step_0000003/train_state.pt", weights_only=True)
    assert blob["scaler"]["scale"] > 1.0  # the scaler's state is part of the checkpoint

    die_at_batch(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model_config(), c, ParallelConfig(), job(tmp_path, "killed"))
    monkeypatch.undo()
    res = train(tiny_model_config(), c, ParallelConfig(), job(tmp_path, "killed"))
    assert res["train_loss"] == ref["train_loss"]
    assert sha(tmp_path / "ref/model.safetensors") == sha(tmp_path / "killed/model.safetensors")


def test_bf16_and_fp32_do_not_scale(tmp_path):
    trainer = Trainer(tiny_model_config(), cfg(precision="fp32"), ParallelConfig(), job(tmp_path))
    assert not trainer.scaler.is_enabled()
    trainer.tracker.close()


# --------------------------------------------------------------------------------------------------------------------
# reproducibility


def test_same_params_give_bit_identical_weights_and_metrics(tmp_path):
    a = train(tiny_model_config(), cfg(), ParallelConfig(), job(tmp_path, "a"))
    b = train(tiny_model_config(), cfg(), ParallelConfig(), job(tmp_path, "b"))
    assert sha(tmp_path / "a/model.safetensors") == sha(tmp_path / "b/model.safetensors")
    # everything but the run-info (throughput, wall time, date), which is why that goes to a file DVC never hashes
    assert {k: v for k, v in a.items() if k != "runtime"} == {k: v for k, v in b.items() if k != "runtime"}
    assert (tmp_path / "a/train_info.json").read_bytes() == (tmp_path / "b/train_info.json").read_bytes()
    for name in ("loss", "grad_norm", "lr"):
        assert ((tmp_path / f"a_live/plots/metrics/train/{name}.tsv").read_text()
                == (tmp_path / f"b_live/plots/metrics/train/{name}.tsv").read_text())


# --------------------------------------------------------------------------------------------------------------------
# SFT's starting weights are part of the run's identity


def test_changed_starting_weights_start_a_fresh_run(tmp_path, monkeypatch, capsys):
    model_cfg = tiny_model_config()
    torch.manual_seed(1)
    write_model(tmp_path / "init", Transformer(model_cfg))
    c = cfg(checkpoint_every=3, eval_every=100)
    die_at_batch(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        train(model_cfg, c, ParallelConfig(), job(tmp_path, "sft", init_from=tmp_path / "init"))
    monkeypatch.undo()
    assert checkpoint.latest_checkpoint(tmp_path / "sft/checkpoints") is not None
    torch.manual_seed(2)
    write_model(tmp_path / "init", Transformer(model_cfg))  # the pretrained model changed meanwhile
    capsys.readouterr()
    train(model_cfg, c, ParallelConfig(), job(tmp_path, "sft", init_from=tmp_path / "init"))
    assert "resuming" not in capsys.readouterr().out
    train(model_cfg, c, ParallelConfig(), job(tmp_path, "fresh", init_from=tmp_path / "init"))
    assert sha(tmp_path / "sft/model.safetensors") == sha(tmp_path / "fresh/model.safetensors")


# --------------------------------------------------------------------------------------------------------------------
# best-of-run and early stopping


def scripted_validation(monkeypatch, losses: list[float]) -> None:
    """Validation passes report these losses in turn (the weights are real; only the score is scripted)."""
    it = iter(losses)
    monkeypatch.setattr(Trainer, "evaluate", lambda self: {"val/loss": next(it), "val/ppl": 1.0})


@pytest.mark.parametrize("final", ["best", "last"])
def test_final_model_is_the_best_or_the_last(tmp_path, monkeypatch, final):
    scripted_validation(monkeypatch, [3.0, 2.0, 2.5, 2.6])
    c = cfg(steps=8, eval_every=2, checkpoint_every=2, final=final)
    res = train(tiny_model_config(), c, ParallelConfig(), job(tmp_path))
    assert res["best_step"] == 4 and res["final"] == final and res["stopped_early"] is False
    assert res["val_loss"] == (2.0 if final == "best" else 2.6)  # metrics describe the model the stage outputs
    out = sha(tmp_path / "run/model.safetensors")
    best = load_model(tmp_path / "run/best").state_dict()
    at_4 = load_model(tmp_path / "run/checkpoints/step_0000004").state_dict()
    assert all(torch.equal(best[k], at_4[k]) for k in best)
    picked = "best" if final == "best" else "checkpoints/step_0000008"
    written = Transformer(tiny_model_config())
    written.load_state_dict(load_model(tmp_path / "run" / picked).state_dict())
    write_model(tmp_path / "expected", written)
    assert out == sha(tmp_path / "expected/model.safetensors")


def test_early_stop_ends_the_run_and_is_not_resumed(tmp_path, monkeypatch, capsys):
    scripted_validation(monkeypatch, [3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    c = cfg(steps=12, eval_every=2, checkpoint_every=100, early_stop_patience=2)
    res = train(tiny_model_config(), c, ParallelConfig(), job(tmp_path))
    assert res["stopped_early"] is True and res["steps"] == 8 and res["best_step"] == 4
    assert "stopping early at step 8" in capsys.readouterr().out
    info = json.loads((tmp_path / "run/train_info.json").read_text())
    assert info["stopped_early"] is True
    scripted_validation(monkeypatch, [3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    train(tiny_model_config(), c, ParallelConfig(), job(tmp_path))  # rerun: a finished run starts over
    assert "resuming" not in capsys.readouterr().out


def test_epoch_count_is_announced_and_many_epochs_warn(tmp_path, capsys):
    small = Job(DocRows([STREAM[0][:2_000]], 32), DocRows(VAL, 32), tmp_path / "r", None,
                token_bytes=np.ones(512, dtype=np.int64), desc="pretrain")
    train(tiny_model_config(), cfg(steps=20, eval_every=100), ParallelConfig(), small)
    out = capsys.readouterr().out
    assert "1.27 epochs of the training split (63 rows of 32)" in out and "warning" not in out  # 20 x 4 / 63
    smaller = Job(DocRows([STREAM[0][:600]], 32), DocRows(VAL, 32), tmp_path / "r2", None,
                  token_bytes=np.ones(512, dtype=np.int64), desc="pretrain")
    train(tiny_model_config(), cfg(steps=20, eval_every=100), ParallelConfig(), smaller)
    assert "warning: the run repeats its training data 4.2 times" in capsys.readouterr().out  # 20 x 4 / 19


def test_an_overfitting_run_still_ends_on_its_best_model(tmp_path):
    """Small text, many epochs: validation bits per byte fall, then rise as the model memorises its training split.
    The stage's model is the best one, so its held-out bpb is the best the run reached."""
    import csv

    gen = np.random.default_rng(1)
    words = gen.integers(1, 200, size=(2, 1_000)).astype(np.uint16)  # unrelated "text" for train and val
    small = Job(DocRows([words[0]], 32), DocRows([words[1]], 32), tmp_path / "run", tmp_path / "live",
                token_bytes=np.full(512, 4, dtype=np.int64), data_fingerprint="small", desc="pretrain")
    res = train(tiny_model_config(), cfg(steps=80, lr=1e-2, eval_every=10, warmup_steps=3, schedule="constant",
                                         checkpoint_every=1000), ParallelConfig(), small)
    rows = list(csv.DictReader(open(tmp_path / "live/plots/metrics/val/bpb.tsv"), delimiter="\t"))
    curve = {int(r["step"]): float(r["bpb"]) for r in rows}
    assert curve[80] > min(curve.values()) + 0.02  # it did overfit: the last model is worse than the best
    assert res["final"] == "best" and res["val_bpb"] == pytest.approx(curve[res["best_step"]], rel=1e-6)
    assert res["val_bpb"] <= min(curve.values()) + 0.02


# --------------------------------------------------------------------------------------------------------------------
# the document mask of packed rows


@pytest.mark.parametrize("doc_mask", [True, False])
def test_training_and_validation_pass_the_document_mask(tmp_path, monkeypatch, doc_mask):
    """With packed documents (a bos_id) the loop gives the model every position's document index, counted from the
    row's <|bos|> tokens, in training and in validation; `doc_mask: false` leaves attention across the row."""
    gen = np.random.default_rng(0)
    docs = [np.concatenate([[0], gen.integers(1, 512, size=n - 1)]) for n in gen.integers(5, 30, size=400)]
    train_rows = DocRows([np.concatenate(docs[:300]).astype(np.uint16)], 32, bos_id=0)
    val_rows = DocRows([np.concatenate(docs[300:]).astype(np.uint16)], 32, bos_id=0)
    seen = []
    forward = Transformer.forward

    def spy(model, idx, cache=None, docs=None):
        if cache is None:
            seen.append((idx.clone(), docs))
        return forward(model, idx, cache, docs)

    monkeypatch.setattr(Transformer, "forward", spy)
    packed = Job(train_rows, val_rows, tmp_path / "r", None, token_bytes=np.ones(512, dtype=np.int64), bos_id=0)
    train(tiny_model_config(), cfg(steps=4, eval_every=2, doc_mask=doc_mask), ParallelConfig(), packed)
    assert len(seen) == 4 + 2 * 2  # 4 training forwards, 2 validation passes of 2 batches
    for x, d in seen:
        if doc_mask:
            assert torch.equal(d, (x == 0).cumsum(1)) and int(d[:, -1].max()) >= 2  # rows hold several documents
        else:
            assert d is None
