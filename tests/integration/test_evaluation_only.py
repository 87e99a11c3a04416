"""Evaluating never retrains: the in-training HellaSwag curve reads its own probe items (data.probe ->
data/raw/probe), so pointing `data.hellaswag` at other items, or changing an `eval.*` key other than the curve's
`eval.hellaswag_every`, reruns only evaluation stages and leaves the trained models byte for byte as they were."""

from __future__ import annotations

import json
import re

import pytest

from tests.dvc_run import copy_run, run_in, snapshot
from tests.helpers import set_params


ITEM = {"ind": 7, "activity_label": "Baking", "ctx_a": "A man puts a cake in the oven.", "ctx_b": "he",
        "ctx": "A man puts a cake in the oven. he", "endings": ["waits.", "swims.", "flies.", "sings."], "label": 0,
        "split": "val", "split_type": "indomain", "source_id": "test~1"}


@pytest.mark.slow
def test_a_new_hellaswag_source_and_eval_keys_rerun_only_evaluation(dvc_run, tmp_path):
    repo = copy_run(dvc_run, tmp_path / "repo")
    (repo / "items.jsonl").write_text("".join(json.dumps(dict(ITEM, ind=i)) + "\n" for i in range(5)))
    set_params(repo, {"data": {"hellaswag": {"source": "local", "paths": ["items.jsonl"]}},
                      "eval": {"batch_size": 7, "chat_items": 6}})
    models = {k: v for k, v in snapshot(repo).items() if k.startswith("models/")}
    out = run_in(repo, "dvc", "repro").stdout
    ran = re.findall(r"Running stage '([^']+)'", out)
    # eval.batch_size is every scoring stage's: eval_text and eval_harness rerun too, still no training
    assert sorted(ran) == ["download_hellaswag", "eval_chat", "eval_harness", "eval_hellaswag", "eval_text"], out
    assert {k: v for k, v in snapshot(repo).items() if k.startswith("models/")} == models
    assert json.loads((repo / "metrics/hellaswag.json").read_text())["num_items"] == 5
    assert json.loads((repo / "metrics/chat.json").read_text())["num_items"] == 6
