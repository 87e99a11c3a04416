"""Sharing a run through a DVC remote and a git remote, on this machine only: clone A (the tiny run) pushes its
outputs to a local-folder DVC remote and its commits to a bare git repository; a fresh clone B pulls them and is up
to date without running a stage (and `llm-chat` answers from the pulled model); an experiment of A pushed with
`dvc exp push` shows in B's `make exps` table after `dvc exp pull`."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.dvc_run import copy_run, run_in


def exps_command() -> list[str]:
    """`make exps`' own dvc command, read from the Makefile (so the test follows it)."""
    recipe = re.search(r"^exps:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    cmd = recipe.replace("$(RUN) $(BIN)/dvc", "dvc").replace("$(EXPS_ARGS)", "")
    return shlex.split(cmd)


@pytest.mark.slow
def test_push_then_pull_in_a_fresh_clone_and_share_an_experiment(dvc_run, tmp_path):
    a = copy_run(dvc_run, tmp_path / "a")
    storage, origin = tmp_path / "storage", tmp_path / "origin.git"
    run_in(tmp_path, "git", "init", "-q", "--bare", str(origin))
    run_in(a, "dvc", "remote", "add", "-d", "shared", str(storage))
    run_in(a, "git", "commit", "-qam", "a DVC remote for the team")
    run_in(a, "git", "remote", "add", "origin", str(origin))
    run_in(a, "git", "push", "-q", "origin", "HEAD:refs/heads/main")
    assert "files pushed" in run_in(a, "dvc", "push").stdout

    run_in(tmp_path, "git", "clone", "-q", "--branch", "main", str(origin), "b")
    b = tmp_path / "b"
    assert not (b / "models/sft").exists()
    run_in(b, "dvc", "pull")
    status = run_in(b, "dvc", "status").stdout
    assert "Data and pipelines are up to date" in status, status
    assert (b / "models/sft/model.safetensors").read_bytes() == (a / "models/sft/model.safetensors").read_bytes()
    # the teammate talks to the pulled model at once (with their clone's code): the answer of A's model, seeded
    chat = [run_in(clone, str(Path(sys.executable).parent / "llm-chat"), "-p", "Tell me a story.", "--max-tokens",
                   "8", "--seed", "1", PYTHONPATH=str(clone)) for clone in (a, b)]
    assert chat[1].stdout == chat[0].stdout and not chat[1].stderr.strip(), chat[1].stdout + chat[1].stderr

    out = run_in(a, "dvc", "exp", "run", "-n", "cooler", "-S", "sample.temperature=0.5").stdout
    assert re.findall(r"Running stage '([^']+)'", out) == ["sample"]
    run_in(a, "dvc", "exp", "push", "origin", "cooler")
    run_in(b, "dvc", "exp", "pull", "origin", "cooler")
    table = run_in(b, *exps_command()).stdout
    row = next((line for line in table.splitlines() if "[cooler]" in line), None)
    assert row is not None and "0.5" in row.split(), table
