"""The eval_harness stage's parts that need no harness run: off by default, the figures it writes, and the error
when lm-evaluation-harness is missing. (tests/integration/test_pipeline.py runs a local task through `dvc repro`.)"""

import json
import shutil
import subprocess
import sys

import pytest

from llm_core.evaluation import harness
from tests.helpers import ROOT, project_env

REPORT = {
    "results": {
        "hellaswag": {"alias": "hellaswag", "sample_len": 100, "acc,none": 0.3, "acc_stderr,none": 0.04,
                      "acc_norm,none": 0.31, "acc_norm_stderr,none": 0.05},
        "gsm8k": {"exact_match,strict-match": 0.02, "exact_match_stderr,strict-match": 0.01},
        "wikitext": {"word_perplexity,none": 40.5, "word_perplexity_stderr,none": "N/A", "bits_per_byte,none": 0.9},
    },
    "n-samples": {"hellaswag": {"original": 10042, "effective": 100}, "wikitext": {"original": 62, "effective": 62}},
}


def test_flatten_names_each_figure_task_metric():
    assert harness.flatten(REPORT) == {
        "hellaswag_acc": 0.3, "hellaswag_acc_norm": 0.31, "hellaswag_num_items": 100,
        "gsm8k_exact_match_strict-match": 0.02,
        "wikitext_word_perplexity": 40.5, "wikitext_bits_per_byte": 0.9, "wikitext_num_items": 62}
    assert harness.flatten({}) == {}


def test_off_by_default_writes_empty_files_without_importing_the_harness(tmp_path):
    """With eval.harness_tasks: [] (the committed params) the stage runs neither lm_eval nor torch."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    code = ("import runpy, sys; sys.argv = ['eval_harness', '--model', 'models/none', '--tokenizer', 'models/none', "
            "'--metrics', 'metrics/harness.json', '--report', 'metrics/report.json']; "
            "runpy.run_module('stages.eval_harness', run_name='__main__'); "
            "print(sorted(m for m in ('torch', 'lm_eval', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=project_env(PYTHONPATH=str(ROOT)), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("[]")
    assert json.loads((tmp_path / "metrics/harness.json").read_text()) == {}
    assert json.loads((tmp_path / "metrics/report.json").read_text()) == {}


def test_missing_harness_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    with pytest.raises(ValueError, match=r"lm-evaluation-harness cannot be imported.*; pip install 'lm-eval\[hf\]"):
        harness.run("unused", ["hellaswag"])


def test_harness_params_are_checked():
    from llm_core.config import ParamsError, load_params

    with pytest.raises(ParamsError, match=r"eval.harness_tasks\[1\] is empty"):
        load_params(ROOT / "params.yaml", {"eval.harness_tasks": ["hellaswag", " "]})
    with pytest.raises(ParamsError, match="eval.harness_limit must be >= 0"):
        load_params(ROOT / "params.yaml", {"eval.harness_limit": -1})
    with pytest.raises(ParamsError, match="eval.text.source must be one of pretrain_val, local, url, hf"):
        load_params(ROOT / "params.yaml", {"eval.text.source": "synthetic"})
    with pytest.raises(ParamsError, match="eval.text.source=local needs eval.text.paths"):
        load_params(ROOT / "params.yaml", {"eval.text.source": "local"})
