"""A tiny pipeline run through the real `dvc repro` in a git repository, and what tests of DVC's promises do with it:
copy it, run commands in it (dvc, git, the project's scripts) under a chosen umask, snapshot what the pipeline
wrote. The session fixture `dvc_run` (tests/integration/conftest.py) builds it once; every test works on a copy."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import pipeline_copy, project_env, tiny_params

# the shared run's params: the tiny pipeline with the in-training HellaSwag curve on (steps 3 and 6)
PARAMS = tiny_params(eval={"hellaswag_every": 3})
GIT_ID = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com", "GIT_COMMITTER_NAME": "test",
          "GIT_COMMITTER_EMAIL": "test@example.com"}
OUTPUT_ROOTS = ("data", "models", "metrics", "dvclive")  # where the pipeline writes


@dataclass
class DvcRun:
    path: Path  # the repository: code, params, dvc.lock and metrics committed, data and models in DVC's cache
    output: str  # what `dvc repro` printed
    trace: Path  # the params keys each stage read (LLM_CORE_TRACE_PARAMS)


def run_in(repo: Path, *cmd: str, ok: bool = True, umask: int | None = None, timeout: float = 900,
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


def run_pipeline(root: Path, umask: int = 0o022) -> DvcRun:
    """root/repo: a copy of the project with PARAMS, committed, then `dvc repro` under `umask`, committed."""
    repo = pipeline_copy(root / "repo", PARAMS)
    (repo / ".gitignore").write_text("__pycache__/\n")
    for key, value in (("user.name", "test"), ("user.email", "test@example.com")):  # dvc exp run commits too
        run_in(repo, "git", "config", key, value)
    git_commit(repo, "code and params")
    trace = root / "params_read.jsonl"
    out = run_in(repo, "dvc", "repro", umask=umask, LLM_CORE_TRACE_PARAMS=str(trace))
    git_commit(repo, "tiny run")
    return DvcRun(repo, out.stdout + out.stderr, trace)


def copy_repo(src: Path, dst: Path) -> Path:
    """A copy of a DVC project (workspace, git history and DVC cache) that a test may change."""
    def skip_dvc_tmp(folder: str, names: list[str]) -> list[str]:  # locks and the state db of the original
        return ["tmp"] if Path(folder) == src / ".dvc" else []

    return Path(shutil.copytree(src, dst, symlinks=True, ignore=skip_dvc_tmp))


def copy_run(run: DvcRun, dst: Path) -> Path:
    """A copy of the run that a test may change."""
    return copy_repo(run.path, dst)


def snapshot(repo: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mode of every file the pipeline wrote (stage outputs, curves, run-info files)."""
    out = {}
    for top in OUTPUT_ROOTS:
        for p in sorted((repo / top).rglob("*")):
            if p.is_file() and ".downloads" not in p.parts:
                out[p.relative_to(repo).as_posix()] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                                       stat.S_IMODE(p.stat().st_mode))
    return out
