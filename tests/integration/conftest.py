"""A small project made by the stage scripts themselves, shared by the integration tests that run stages."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, merge, pipeline_copy, project_env

TINY = {
    "data": {"num_docs": 120, "sft": {"num_docs": 40}, "hellaswag": {"num_docs": 8}, "val_fraction": 0.1},
    "tokenizer": {"vocab_size": 400},
    "model": {"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64, "max_seq_len": 64},
    "pretrain": {"steps": 2, "batch_size": 2, "seq_len": 32, "eval_every": 2, "global_eval_tokens": 64,
                 "warmup_steps": 1},
    "sft": {"seq_len": 64},
    "tokenize": {"workers": 1},
}
PRETRAIN = ["stages.pretrain", "--tokens", "data/tokens/pretrain", "--tokenizer", "models/tokenizer",
            "--raw", "data/raw/pretrain", "--out", "models/pretrain", "--live", "dvclive/pretrain",
            "--metrics", "metrics/pretrain.json"]
SAMPLE = ["stages.sample", "--model", "models/sft", "--tokenizer", "models/tokenizer", "--out", "metrics/s.json"]


def stage(cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=project_env(), capture_output=True, text=True,
                          timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def set_params(repo: Path, over: dict) -> None:
    params = merge(yaml.safe_load((repo / "params.yaml").read_text()), over)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    """Downloaded data, a tokenizer and pretraining shards, made by the stage scripts themselves."""
    repo = tmp_path_factory.mktemp("bad_input")
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    set_params(repo, TINY)
    stage(repo, "stages.download", "pretrain", "data/raw/pretrain")
    stage(repo, "stages.train_tokenizer", "data/raw/pretrain", "models/tokenizer")
    stage(repo, "stages.tokenize", "pretrain", "--raw", "data/raw/pretrain", "--tokenizer", "models/tokenizer",
          "--out", "data/tokens/pretrain")
    return repo


@pytest.fixture
def repo(base, tmp_path) -> Path:
    """A copy of the base project that a test may change."""
    return Path(shutil.copytree(base, tmp_path / "repo"))


# --------------------------------------------------------------------------------------------------------------------
# One tiny pipeline run through the real `dvc repro` in a git repository, shared by the tests of what DVC promises
# (the pipeline test, failures that lose nothing, reproduction, file modes, evaluation, sharing). A test never
# changes it: it works on its own copy (`copy_run`).

DVC_TINY = {
    "data": {"num_docs": 300, "sft": {"num_docs": 200}, "hellaswag": {"num_docs": 24}, "probe": {"num_docs": 8},
             "val_fraction": 0.1},
    "tokenizer": {"vocab_size": 600},
    "tokenize": {"workers": 1},
    "model": {"n_layers": 2, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64, "max_seq_len": 256},
    "pretrain": {"steps": 6, "batch_size": 4, "seq_len": 32, "eval_every": 3, "global_eval_tokens": 256,
                 "checkpoint_every": 3, "warmup_steps": 2},
    "sft": {"steps": 3, "batch_size": 2, "seq_len": 256, "eval_every": 3, "global_eval_tokens": 512, "warmup_steps": 1},
    "sample": {"max_new_tokens": 8},
    "eval": {"chat_items": 20, "hellaswag_every": 3},
}
GIT_ID = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com", "GIT_COMMITTER_NAME": "test",
          "GIT_COMMITTER_EMAIL": "test@example.com"}


def run_in(repo: Path, *cmd: str, ok: bool = True, umask: int | None = None, timeout: float = 600,
           **env: str) -> subprocess.CompletedProcess:
    """A command in `repo` with the project environment (dvc runs as `python -m dvc`), under `umask` if given."""
    argv = [sys.executable, "-m", *cmd] if cmd[0] == "dvc" else list(cmd)
    proc = subprocess.run(argv, cwd=repo, env=project_env(**GIT_ID, **env), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc


def git_commit(repo: Path, message: str) -> None:
    run_in(repo, "git", "add", "-A")
    run_in(repo, "git", "commit", "-qm", message)


@dataclass
class DvcRun:
    path: Path  # the repository: code, params, dvc.lock and outputs of the run, all committed (outputs: in DVC)
    output: str  # what `dvc repro` printed
    trace: Path  # the params keys each stage read (LLM_CORE_TRACE_PARAMS)


@pytest.fixture(scope="session")
def dvc_run(tmp_path_factory) -> DvcRun:
    root = tmp_path_factory.mktemp("dvc_run")
    repo = pipeline_copy(root / "repo", DVC_TINY)
    (repo / ".gitignore").write_text("__pycache__/\n")
    for key, value in (("user.name", "test"), ("user.email", "test@example.com")):  # dvc exp run commits too
        run_in(repo, "git", "config", key, value)
    git_commit(repo, "code and params")
    trace = root / "params_read.jsonl"
    out = run_in(repo, "dvc", "repro", umask=0o022, LLM_CORE_TRACE_PARAMS=str(trace))
    git_commit(repo, "tiny run")
    return DvcRun(repo, out.stdout + out.stderr, trace)


def copy_run(run: DvcRun, dst: Path) -> Path:
    """A copy of the shared run (workspace, git history and DVC cache) that a test may change."""
    def skip_dvc_tmp(folder: str, names: list[str]) -> list[str]:  # locks and the state db of the original
        return ["tmp"] if Path(folder) == run.path / ".dvc" else []

    return Path(shutil.copytree(run.path, dst, symlinks=True, ignore=skip_dvc_tmp))


OUTPUT_ROOTS = ("data", "models", "metrics", "dvclive")


def snapshot(repo: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mode of every file the pipeline wrote (stage outputs, curves, run-info files)."""
    out = {}
    for top in OUTPUT_ROOTS:
        for p in sorted((repo / top).rglob("*")):
            if p.is_file() and ".downloads" not in p.parts:
                out[p.relative_to(repo).as_posix()] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                                       stat.S_IMODE(p.stat().st_mode))
    return out
