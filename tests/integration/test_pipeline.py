"""The real `dvc repro` on a copy of the repository with a tiny params override."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import pipeline_copy, project_env, run_ok
from tests.pipeline_graph import params_report

TINY = {
    "data": {"num_docs": 300, "sft": {"num_docs": 200}, "hellaswag": {"num_docs": 24}, "val_fraction": 0.1},
    "tokenizer": {"vocab_size": 600},
    "model": {"n_layers": 2, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64, "max_seq_len": 256},
    "pretrain": {"steps": 6, "batch_size": 4, "seq_len": 32, "eval_every": 3, "global_eval_tokens": 256,
                 "checkpoint_every": 3, "warmup_steps": 2},
    "sft": {"steps": 3, "batch_size": 2, "seq_len": 256, "eval_every": 3, "global_eval_tokens": 512, "warmup_steps": 1},
    "sample": {"max_new_tokens": 8},
    "eval": {"chat_items": 20, "hellaswag_every": 3, "hellaswag_items": 8},
}


run = run_ok


def read_params(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return pipeline_copy(tmp_path_factory.mktemp("pipeline"), TINY)


@pytest.mark.slow
def test_repro_end_to_end_then_incremental(repo: Path, tmp_path: Path):
    dvc = [sys.executable, "-m", "dvc"]
    trace = tmp_path / "params_read.jsonl"
    out = run(dvc + ["repro"], repo, LLM_CORE_TRACE_PARAMS=str(trace))
    assert set(ran_stages(out)) == {"download_pretrain", "download_sft", "download_hellaswag", "train_tokenizer",
                                    "tokenize", "tokenize_sft", "pretrain", "sft", "eval_hellaswag", "eval_chat",
                                    "sample"}
    # every params key a stage read while running is declared for it in dvc.yaml
    missing, unused = params_report(trace, repo / "dvc.yaml")
    assert not missing, "dvc.yaml is missing params:\n" + "\n".join(missing)
    print("\n".join(unused))  # keys of sources not used by this configuration (e.g. data.url): reported only
    pre = json.loads((repo / "metrics/pretrain.json").read_text())
    for key in ("train_loss", "val_loss", "val_bpb", "val_ppl", "val_token_acc", "entropy_floor_bpb", "unigram_bpb",
                "tokens_per_sec", "best_step", "stopped_early"):
        assert key in pre, key
    assert pre["val_ppl"] == pytest.approx(2.718281828 ** pre["val_loss"], rel=1e-4)
    sft = json.loads((repo / "metrics/sft.json").read_text())
    assert {"train_loss", "val_loss", "val_ppl", "val_token_acc"} <= set(sft)
    hs = json.loads((repo / "metrics/hellaswag.json").read_text())
    assert hs["num_items"] == 24 and all(0 <= hs[k] <= 1 for k in ("acc", "acc_norm", "acc_norm_tokens"))
    assert (repo / "dvclive/pretrain/plots/metrics/val/hellaswag_acc_norm.tsv").exists()  # the curve in training
    chat = json.loads((repo / "metrics/chat.json").read_text())
    assert chat["num_items"] == 20 and 0 <= chat["accuracy"] <= 1 and "accuracy_stated_pet" in chat
    samples = json.loads((repo / "metrics/samples.json").read_text())
    n_prompts = len(read_params(repo)["sample"]["prompts"]) + len(read_params(repo)["sample"]["chat_prompts"])
    assert samples["num_samples"] == n_prompts and samples["tokens_per_sec"] > 0
    assert all(s["output"] for s in samples["samples"])
    assert (repo / "models/pretrain/model.safetensors").exists()
    assert (repo / "dvclive/pretrain/plots/metrics/train/loss.tsv").exists()

    assert ran_stages(run(dvc + ["repro"], repo)) == []  # nothing changed: nothing runs

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sample"]["temperature"] = 0.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(run(dvc + ["repro"], repo)) == ["sample"]
    status = run(dvc + ["status"], repo)
    assert "up to date" in status

    # the SFT data has its own shards: changing it leaves pretraining (and its checkpoints) alone
    pretrained = (repo / "models/pretrain/model.safetensors").read_bytes()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["sft"]["num_docs"] = 150
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(run(dvc + ["repro"], repo)) == ["download_sft", "tokenize_sft", "sft", "eval_chat", "sample"]
    assert (repo / "models/pretrain/model.safetensors").read_bytes() == pretrained


@pytest.mark.slow
def test_bad_params_stop_before_work_and_keep_outputs(repo: Path):
    before = (repo / "metrics/pretrain.json").read_text()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pretrain"]["warmup_steps"] = -5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "pretrain"], cwd=repo, env=project_env(),
                          capture_output=True,
                          text=True)
    assert proc.returncode != 0
    assert "pretrain.warmup_steps must be >= 0 (got -5)" in proc.stdout + proc.stderr
    assert (repo / "metrics/pretrain.json").read_text() == before
    assert (repo / "models/pretrain/model.safetensors").exists()
