"""`dvc exp run -S data.source=local -S data.paths=[...]` pretrains on a folder of text files: download, tokenizer,
shards and pretraining from the files (the stages after pretraining read its model whatever the corpus; the tiny
pipeline's own test runs them)."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import pipeline_copy, run_ok, tiny_params

TINY = tiny_params(tokenize={"workers": 2})  # the process pool, as on a real corpus


run = run_ok

WORDS = ("the river ran past an old mill where a miller kept bread and a grey cat that slept by the fire while "
         "rain fell on the roof and the children read stories of ships kings and far away hills").split()


@pytest.mark.slow
def test_exp_run_on_a_folder_of_text_files(tmp_path: Path):
    repo = pipeline_copy(tmp_path / "repo", TINY)
    (repo / ".gitignore").write_text("/data\n/models\n/metrics\n/dvclive\n")
    texts = tmp_path / "books"
    texts.mkdir()
    rng = random.Random(0)
    for b in range(6):
        paras = ["\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(3)) for _ in range(80)]
        (texts / f"book{b}.txt").write_text("\n\n".join(paras) + "\n")
    (texts / "empty.txt").write_text("")
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "base"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    out = run([sys.executable, "-m", "dvc", "exp", "run", "pretrain", "-S", "data.source=local",
               "-S", f"data.paths=[{texts}]"], repo)
    assert {"download_pretrain", "train_tokenizer", "tokenize", "pretrain"} <= set(
        re.findall(r"Running stage '([^']+)'", out))
    info = json.loads((repo / "data/raw/pretrain/info.json").read_text())
    assert info["source"] == "local" and info["skipped_empty"] == 1 and len(info["inputs"]) == 7
    assert json.loads((repo / "metrics/tokenizer.json").read_text())["bytes_per_token"] > 1
    pre = json.loads((repo / "metrics/pretrain.json").read_text())
    assert pre["val_loss"] == pre["val_loss"] and "tokens" not in pre  # finite; counters stay in train_info.json
    assert "entropy_floor_bpb" not in info  # only the built-in world knows its entropy
