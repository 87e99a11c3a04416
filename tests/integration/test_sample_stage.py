"""The sample stage: params prompts and a prompts file decoded as one batch, one .jsonl record per prompt; a prompt
longer than the context rolls instead of failing; a bad prompts file line is named."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import yaml

from tests.helpers import ROOT, merge, project_env


def _stage(tmp_path, served_models, sample: dict) -> subprocess.CompletedProcess:
    shutil.copytree(served_models, tmp_path / "models", dirs_exist_ok=True)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), {"sample": sample})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cmd = [sys.executable, "-m", "stages.sample", "--model", "models/sft", "--tokenizer", "models/tokenizer",
           "--out", "metrics/samples.json", "--outputs", "metrics/samples.jsonl"]
    return subprocess.run(cmd, cwd=tmp_path, env=project_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=120)


def test_prompts_file_and_params_prompts_in_one_batch(tmp_path, served_models):
    long_story = "Once upon a time " * 80  # far past the tiny model's 128-token context
    lines = [json.dumps({"prompt": "One day"}), "",
             json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                      {"role": "user", "content": long_story}]})]
    (tmp_path / "more.jsonl").write_text("\n".join(lines) + "\n")
    proc = _stage(tmp_path, served_models, {"prompts_file": "more.jsonl", "max_new_tokens": 6, "max_batch": 3})
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(x) for x in (tmp_path / "metrics/samples.jsonl").read_text().splitlines()]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["sample"]
    n_params = len(params["prompts"]) + len(params["chat_prompts"])
    assert len(records) == n_params + 2
    assert records[n_params]["prompt"] == "One day" and records[-1]["kind"] == "chat"
    assert records[-1]["context_rolled"] > 0 and records[-1]["prompt_tokens"] > 128
    for r in records:
        assert r["finish_reason"] in ("stop", "length") and r["tokens"] <= 6
    summary = json.loads((tmp_path / "metrics/samples.json").read_text())
    assert summary["num_samples"] == len(records) and len(summary["samples"]) == n_params


def test_bad_prompts_file_line_is_named(tmp_path, served_models):
    (tmp_path / "p.jsonl").write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    proc = _stage(tmp_path, served_models, {"prompts_file": "p.jsonl"})
    assert proc.returncode == 2 and "p.jsonl:2 has neither a `prompt` string nor a `messages` list" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "metrics/samples.json").exists()
