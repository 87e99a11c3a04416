"""Throughput counts training time only, and what the pipeline writes follows the umask.

The clock is made to jump by 1000 s inside every validation pass: were validation part of a step's time, that
step's `train/tokens_per_sec` would drop a thousandfold. No assertion depends on how fast this machine is."""

from __future__ import annotations

import csv
import os
import stat

import pytest
import safetensors.torch

from llm_core import files
from llm_core.config import ParallelConfig
from llm_core.model.io import write_model
from llm_core.model.transformer import Transformer
from llm_core.training import tracking
from llm_core.training.loop import Trainer, train
from tests.helpers import stream_job as job
from tests.helpers import tiny_model_config
from tests.helpers import train_config as cfg

JUMP = 1000.0


def test_validation_and_checkpoint_time_are_reported_apart(tmp_path, monkeypatch):
    offset = {"s": 0.0}
    real = tracking.time.perf_counter
    monkeypatch.setattr(tracking.time, "perf_counter", lambda: real() + offset["s"])
    evaluate = Trainer.evaluate

    def slow_evaluate(self):
        offset["s"] += JUMP  # a validation pass that takes 1000 s
        return evaluate(self)

    monkeypatch.setattr(Trainer, "evaluate", slow_evaluate)
    res = train(tiny_model_config(), cfg(steps=6, eval_every=2, checkpoint_every=3), ParallelConfig(), job(tmp_path))
    runtime = res["runtime"]
    assert runtime["val_seconds"] >= 3 * JUMP  # three passes, at steps 2, 4 and 6
    assert runtime["train_seconds"] < JUMP and runtime["checkpoint_seconds"] > 0
    assert runtime["tokens_per_sec"] > 6 * 4 * 32 / JUMP  # the whole run's figure leaves validation out too
    with open(tmp_path / "run_live/plots/metrics/train/tokens_per_sec.tsv") as f:
        tps = [float(r["tokens_per_sec"]) for r in csv.DictReader(f, delimiter="\t")]
    assert len(tps) == 6 and min(tps) > max(tps) / 100  # no dip after a validation step
    assert "tokens_per_sec" not in res and "tokens_per_sec" not in (tmp_path / "run/train_info.json").read_text()


def test_throughput_leaves_out_the_phases(monkeypatch):
    now = {"t": 0.0}
    monkeypatch.setattr(tracking.time, "perf_counter", lambda: now["t"])
    meter = tracking.Throughput(flops_per_token=1.0, peak=100.0)
    meter.add(50)
    now["t"] = 5.0
    with meter.phase("val"):
        now["t"] = 25.0
    assert meter.read() == {"tokens_per_sec": 10.0, "mfu": 0.1}  # 50 tokens in the 5 s that were training
    assert meter.phase_seconds == {"val": 20.0}


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_written_files_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        files.write_json(tmp_path / "a" / "info.json", {"x": 1})  # an atomic write (mkstemp makes 0600)
        write_model(tmp_path / "model", Transformer(tiny_model_config()))  # safetensors makes 0600
        assert files.current_umask() == umask
    finally:
        os.umask(old)
    for path in (tmp_path / "a/info.json", tmp_path / "model/model.safetensors", tmp_path / "model/config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == dir_mode
    assert safetensors.torch.load_file(str(tmp_path / "model/model.safetensors"))  # still a weights file


def test_step_lines_use_fixed_decimals():
    from llm_core.training.tracking import step_line

    line = step_line({"train/loss": 1.23456789, "train/lr": 6e-05, "train/grad_norm": 0.41234, "train/tokens_per_sec":
                      17051.4, "val/loss": 1.2, "val/bpb": 0.18765})
    assert line == ("loss 1.2346  lr 0.000060  grad_norm 0.4123  tokens_per_sec 17,051  val_loss 1.2000  "
                    "val_bpb 0.1877")
    assert "e+" not in line and "e-" not in line


def test_a_folder_is_swapped_in_whole_or_not_at_all(tmp_path):
    """files.atomic_dir (exports, models/init): a block that fails leaves the previous folder and no scratch folder;
    one that ends replaces the folder with exactly what it built."""
    from llm_core.files import atomic_dir

    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("previous")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("the export failed")
    assert [p.name for p in tmp_path.iterdir()] == ["export"] and (out / "old.txt").read_text() == "previous"
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["export"]
    with atomic_dir(tmp_path / "fresh" / "nested") as tmp:  # a folder that did not exist, parents included
        (tmp / "a").write_text("a")
    assert (tmp_path / "fresh" / "nested" / "a").read_text() == "a"
