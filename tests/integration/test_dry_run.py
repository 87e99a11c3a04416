"""`--dry-run` prints the plan at once (before any real step runs), then times real steps with a progress line,
and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import project_env, set_params, stage


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_pretrain_dry_run_reports_and_writes_nothing(repo):
    set_params(repo, {"pretrain": {"steps": 50, "batch_size": 2, "seq_len": 32}})
    before = snapshot(repo)
    proc = stage(repo, "stages.pretrain", "--dry-run", ok=False)  # every path at its dvc.yaml default
    assert proc.returncode == 3, proc.stderr[-3000:]
    out = proc.stdout
    for fragment in ("pretrain dry run (nothing is written)", "parameters", "FLOPs per token",
                     "tokens per step  64 = 2 x 32 x 1 accum x 1 ranks", "steps            50 -> 3,200 tokens",
                     "epochs of the training split", "weights", "gradients", "optimizer", "activations",
                     "s/step on cpu", "min for 50 steps"):
        assert fragment in out, f"{fragment!r} not in:\n{out}"
    lines = out.splitlines()
    # in a log, the progress is one line per update: the plan, the timing's progress, then the estimate
    first_timing = next(i for i, line in enumerate(lines) if line.startswith("  timing "))
    assert lines[first_timing - 1].startswith("  memory per rank") and lines[-1].startswith("  time ")
    assert [line.split("...")[0].strip() for line in lines[first_timing:-1]] == [
        "timing           building the model and optimizer on cpu", "timing           step 1 of 4 (warm-up)",
        "timing           step 2 of 4", "timing           step 3 of 4", "timing           step 4 of 4"]
    assert "warning" not in out  # 50 steps of 2 rows: under the epochs that warn
    assert snapshot(repo) == before
    assert not (repo / "models/pretrain").exists() and not (repo / "dvclive").exists()


def test_dry_run_from_the_environment(repo):
    before = snapshot(repo)
    proc = subprocess.run([sys.executable, "-m", "stages.pretrain"], cwd=repo, capture_output=True, text=True,
                          env=project_env(LLM_CORE_DRY_RUN="1"), timeout=300)
    assert proc.returncode == 3 and "dry run" in proc.stdout, proc.stderr[-2000:]
    assert snapshot(repo) == before
    assert os.environ.get("LLM_CORE_DRY_RUN") is None


def test_the_plan_and_the_stages_warning_print_before_any_step_runs(repo, monkeypatch, capsys):
    from llm_core.training.loop import Trainer, epoch_warning
    from stages import pretrain

    set_params(repo, {"pretrain": {"steps": 5000, "batch_size": 2, "seq_len": 32}})  # many epochs: warned
    shown_at_steps = []
    step = Trainer.train_step

    def watched(self):
        shown_at_steps.append(capsys.readouterr().out)  # what the user has read when a real step starts
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", watched)
    monkeypatch.chdir(repo)
    monkeypatch.setattr(sys, "argv", ["stages.pretrain", "--dry-run"])
    with pytest.raises(SystemExit) as exit_:
        pretrain.main()
    assert exit_.value.code == 3 and len(shown_at_steps) == 4
    first = shown_at_steps[0]
    for fragment in ("pretrain dry run (nothing is written)", "parameters", "FLOPs per token", "tokens per step",
                     "epochs of the training split", "memory per rank", "timing           step 1 of 4 (warm-up)"):
        assert fragment in first, f"{fragment!r} not in:\n{first}"
    epochs = float(first.split(" epochs of the training split")[0].rsplit(" ", 1)[1])
    assert epoch_warning("pretrain", epochs, True) in first.splitlines()  # the stage's own words
    assert "(pretrain.final: best)" in first and "s/step on cpu" not in first
    assert "s/step on cpu" in capsys.readouterr().out
