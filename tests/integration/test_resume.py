"""Exact resume after a real process death, through the real `dvc repro` on a copy of the repository.

The stage process is SIGKILLed (checkpoint.fault_point, env LLM_CORE_FAULT) either just after the step-k checkpoint
or in the middle of writing one; the next `dvc repro pretrain` must resume and end with weights bit-identical
(torch.equal) to an uninterrupted run of the same params (fp32, deterministic CPU).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from llm_core.training.checkpoint import FAULT_ENV
from tests.dvc_run import copy_repo
from tests.helpers import set_params, tiny_params

# 6 steps, checkpoints at 2, 4 and 6 (two kept); fp32 eager on one thread: bit-identical reruns. Muon: its momentum
# on the hidden matrices and AdamW's moments on the rest both resume (AdamW alone: tests/unit/test_train.py)
TINY = tiny_params(pretrain={"checkpoint_every": 2, "keep_checkpoints": 2, "precision": "fp32", "compile": False,
                             "threads": 1, "optimizer": "muon"})
STAGE = ["-m", "stages.pretrain", "--tokens", "data/tokens/pretrain", "--tokenizer", "models/tokenizer",
         "--raw", "data/raw/pretrain"]


def run(cmd: list[str], cwd: Path, fault: str | None = None, ok: bool = True) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    proc = subprocess.run([sys.executable, *cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == ok, f"{' '.join(cmd)} -> {proc.returncode}:\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def repo(tokenized, tmp_path_factory) -> Path:
    dst = copy_repo(tokenized, tmp_path_factory.mktemp("resume") / "repo")
    set_params(dst, TINY)
    return dst


def reference(repo: Path) -> dict:
    """The uninterrupted run (made once, shared by the tests): the stage command itself, beside the pipeline's
    outputs."""
    out = repo / "ref" / "uninterrupted"
    if not (out / "model.safetensors").exists():
        run(STAGE + ["--out", str(out), "--live", str(out) + "_live", "--metrics", str(out) + ".json"], repo)
    return safetensors.torch.load_file(str(out / "model.safetensors"))


def assert_identical(repo: Path, ref: dict) -> None:
    got = safetensors.torch.load_file(str(repo / "models/pretrain/model.safetensors"))
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    # the curve continues where the checkpoint left off: no step is missing or logged twice
    rows = csv.DictReader(open(repo / "dvclive/pretrain/plots/metrics/train/loss.tsv"), delimiter="\t")
    assert [int(r["step"]) for r in rows] == list(range(1, 7))


@pytest.mark.slow
def test_killed_after_checkpoint_resumes_bit_identical(repo):
    ref = reference(repo)
    shutil.rmtree(repo / "models/pretrain", ignore_errors=True)
    run(["-m", "dvc", "repro", "pretrain"], repo, fault="after_checkpoint:4", ok=False)
    ckpts = sorted(p.name for p in (repo / "models/pretrain/checkpoints").iterdir())
    assert ckpts == ["step_0000002", "step_0000004"]
    assert not (repo / "models/pretrain/model.safetensors").exists()
    out = run(["-m", "dvc", "repro", "pretrain"], repo)
    assert "resuming from" in out and "step 4 of 6" in out
    assert_identical(repo, ref)


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(repo):
    ref = reference(repo)
    shutil.rmtree(repo / "models/pretrain", ignore_errors=True)
    run(["-m", "dvc", "repro", "pretrain"], repo, fault="in_checkpoint:4", ok=False)
    root = repo / "models/pretrain/checkpoints"
    # the half-written step 4 holds weights but no marker, under a name that is never loaded
    assert (root / ".tmp-step_0000004" / "model.safetensors").exists()
    assert sorted(p.name for p in root.iterdir()) == [".tmp-step_0000004", "step_0000002"]
    out = run(["-m", "dvc", "repro", "pretrain"], repo)
    assert "step 2 of 6" in out
    assert not (root / ".tmp-step_0000004").exists()
    assert_identical(repo, ref)
