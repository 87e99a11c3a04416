"""A small project made by the stage scripts themselves, shared by the integration tests that run stages."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.dvc_run import DvcRun, run_pipeline
from tests.groups import xdist_group
from tests.helpers import ROOT, pipeline_copy, run_ok, set_params, stage, tiny_params


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    """Downloaded data, a tokenizer and pretraining shards, made by the stage scripts themselves."""
    repo = tmp_path_factory.mktemp("bad_input")
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    set_params(repo, tiny_params())
    stage(repo, "stages.download", "pretrain", "data/raw/pretrain")
    stage(repo, "stages.train_tokenizer", "data/raw/pretrain", "models/tokenizer")
    stage(repo, "stages.tokenize", "pretrain", "--raw", "data/raw/pretrain", "--tokenizer", "models/tokenizer",
          "--out", "data/tokens/pretrain")
    return repo


@pytest.fixture(scope="session")
def tokenized(tmp_path_factory) -> Path:
    """The project with tiny params after `dvc repro tokenize download_probe` (data, tokenizer and shards), for the
    tests that run `dvc repro pretrain` on a copy (tests/dvc_run.py `copy_repo`) with their own pretrain and
    parallel keys: only the pretrain stage runs there."""
    repo = pipeline_copy(tmp_path_factory.mktemp("tokenized") / "repo", tiny_params())
    run_ok([sys.executable, "-m", "dvc", "repro", "tokenize", "download_probe"], repo)  # every input of pretrain
    return repo


@pytest.fixture
def repo(base, tmp_path) -> Path:
    """A copy of the base project that a test may change."""
    return Path(shutil.copytree(base, tmp_path / "repo"))


# --------------------------------------------------------------------------------------------------------------------
# One tiny pipeline run through the real `dvc repro` in a git repository, shared by the tests of what DVC promises
# (the pipeline test, failures that lose nothing, evaluation, reproduction, sharing); each works on its own copy
# (tests/dvc_run.py `copy_run`).


def pytest_collection_modifyitems(config, items):
    """Under `make test` (pytest-xdist, --dist loadgroup) the tests of the shared run go to one worker, which makes
    the run once and then works through them, while the other workers take the rest: none waits for the run. A new
    test of the run must join the group (tests/groups.py)."""
    for item in items:
        if "dvc_run" in getattr(item, "fixturenames", ()) and xdist_group(item.nodeid) != "dvc_run":
            raise pytest.UsageError(f"{item.nodeid} uses the shared dvc run: add it to XDIST_GROUPS in "
                                    "tests/groups.py (group dvc_run)")


@pytest.fixture(scope="session")
def dvc_run(tmp_path_factory) -> DvcRun:
    return run_pipeline(tmp_path_factory.mktemp("dvc_run"))
