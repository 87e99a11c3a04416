"""A small project made by the stage scripts themselves, shared by the integration tests that run stages."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, merge, project_env

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
