"""`--dry-run` prints the plan and the estimates, and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
    assert snapshot(repo) == before
    assert not (repo / "models/pretrain").exists() and not (repo / "dvclive").exists()


def test_dry_run_from_the_environment(repo):
    before = snapshot(repo)
    proc = subprocess.run([sys.executable, "-m", "stages.pretrain"], cwd=repo, capture_output=True, text=True,
                          env=project_env(LLM_CORE_DRY_RUN="1"), timeout=300)
    assert proc.returncode == 3 and "dry run" in proc.stdout, proc.stderr[-2000:]
    assert snapshot(repo) == before
    assert os.environ.get("LLM_CORE_DRY_RUN") is None
