"""The real `dvc repro` on a copy of the repository with a tiny params override."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.dvc_run import copy_run
from tests.helpers import HELLASWAG_FIXTURE, hellaswag_task_yaml, offline_harness_env, project_env, run_ok
from tests.pipeline_graph import params_report


run = run_ok


def read_params(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def repo(dvc_run, tmp_path_factory) -> Path:
    """A copy of the tiny pipeline run by `dvc repro` (conftest `dvc_run`, shared with the tests of DVC's promises)."""
    return copy_run(dvc_run, tmp_path_factory.mktemp("pipeline") / "repo")


@pytest.mark.slow
def test_repro_end_to_end_then_incremental(dvc_run, repo: Path):
    dvc = [sys.executable, "-m", "dvc"]
    assert set(ran_stages(dvc_run.output)) == {
        "download_pretrain", "download_sft", "download_hellaswag", "download_probe", "import_model", "train_tokenizer",
        "tokenize", "tokenize_sft", "pretrain", "sft", "eval_hellaswag", "eval_text", "eval_harness", "eval_chat",
        "sample"}
    # every params key a stage read while running is declared for it in dvc.yaml
    missing, unused = params_report(dvc_run.trace, repo / "dvc.yaml")
    assert not missing, "dvc.yaml is missing params:\n" + "\n".join(missing)
    print("\n".join(unused))  # keys of sources not used by this configuration (e.g. data.url): reported only
    pre = json.loads((repo / "metrics/pretrain.json").read_text())
    for key in ("train_loss", "val_loss", "val_bpb", "val_ppl", "val_token_acc", "entropy_floor_bpb", "unigram_bpb",
                "best_step", "stopped_early"):
        assert key in pre, key
    # what differs from run to run is in the run-info files, which no stage declares as an output
    runtime = json.loads((repo / "metrics/runtime/pretrain.json").read_text())
    assert runtime["tokens_per_sec"] > 0 and runtime["train_seconds"] > 0 and "val_seconds" in runtime
    assert "tokens_per_sec" not in pre
    assert pre["val_ppl"] == pytest.approx(2.718281828 ** pre["val_loss"], rel=1e-4)
    sft = json.loads((repo / "metrics/sft.json").read_text())
    assert {"train_loss", "val_loss", "val_ppl", "val_token_acc"} <= set(sft)
    hs = json.loads((repo / "metrics/hellaswag.json").read_text())
    assert hs["num_items"] == 24 and all(0 <= hs[k] <= 1 for k in ("acc", "acc_norm", "acc_norm_tokens"))
    assert (repo / "dvclive/pretrain/plots/metrics/val/hellaswag_acc_norm.tsv").exists()  # the curve in training
    records = [json.loads(line) for line in (repo / "metrics/hellaswag_items.jsonl").read_text().splitlines()]
    assert len(records) == 24 and all(len(r["loglik"]) == len(r["endings"]) == len(r["chars"]) for r in records)
    for name in ("acc", "acc_norm", "acc_norm_tokens"):
        assert hs[name] == pytest.approx(sum(r["pick"][name] == r["label"] for r in records) / 24, abs=1e-6)
    text = json.loads((repo / "metrics/eval_text.json").read_text())
    val_docs = json.loads((repo / "data/raw/pretrain/info.json").read_text())["docs_val"]
    assert text["num_docs"] == val_docs and text["byte_perplexity"] == pytest.approx(2 ** text["bits_per_byte"])
    assert json.loads((repo / "metrics/harness.json").read_text()) == {}  # off by default: no harness work
    shown = run(dvc + ["metrics", "show", "--json"], repo)
    assert "metrics/eval_text.json" in shown and "metrics/hellaswag.json" in shown
    assert "hellaswag_items" not in shown and "harness_report" not in shown  # tracked, but not read as metrics
    chat = json.loads((repo / "metrics/chat.json").read_text())
    assert chat["num_items"] == 20 and 0 <= chat["accuracy"] <= 1 and "accuracy_stated_pet" in chat
    samples = json.loads((repo / "metrics/samples.json").read_text())
    n_prompts = len(read_params(repo)["sample"]["prompts"]) + len(read_params(repo)["sample"]["chat_prompts"])
    assert samples["num_samples"] == n_prompts
    assert json.loads((repo / "metrics/runtime/sample.json").read_text())["tokens_per_sec"] > 0
    assert all(s["output"] for s in samples["samples"])
    assert (repo / "models/pretrain/model.safetensors").exists()
    assert (repo / "dvclive/pretrain/plots/metrics/train/loss.tsv").exists()
    # the model folders say what they are, and llm-chat on a checkpoint finds the run's tokenizer
    assert json.loads((repo / "models/sft/model_info.json").read_text()) == {"chat": True, "stage": "sft"}
    assert json.loads((repo / "models/pretrain/model_info.json").read_text()) == {"chat": False, "stage": "pretrain"}
    checkpoint = max(p for p in (repo / "models/sft/checkpoints").iterdir() if p.name.startswith("step_"))
    assert "talking to" not in run([sys.executable, "-m", "llm_core.inference.console", "--model",
                                    str(checkpoint.relative_to(repo)), "-p", "Hi", "--max-tokens", "3"], repo)

    assert ran_stages(run(dvc + ["repro"], repo)) == []  # nothing changed: nothing runs

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["sample"]["temperature"] = 0.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(run(dvc + ["repro"], repo)) == ["sample"]
    status = run(dvc + ["status"], repo)
    assert "up to date" in status

    # each evaluation declares only its own params: the text to score reruns eval_text alone
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["eval"]["text"]["max_docs"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(run(dvc + ["repro"], repo)) == ["eval_text"]
    assert json.loads((repo / "metrics/eval_text.json").read_text())["num_docs"] == 3

    # the SFT data has its own shards: changing it leaves pretraining (and its checkpoints) alone
    pretrained = (repo / "models/pretrain/model.safetensors").read_bytes()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["sft"]["num_docs"] = 150
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(run(dvc + ["repro"], repo)) == ["download_sft", "tokenize_sft", "sft", "eval_chat", "sample"]
    assert (repo / "models/pretrain/model.safetensors").read_bytes() == pretrained


@pytest.mark.slow
def test_harness_stage_runs_a_local_task_and_dvc_shows_its_figures(repo: Path, tmp_path: Path):
    """eval.harness_tasks on: the stage exports the model and runs lm-evaluation-harness (offline, on a local copy
    of its hellaswag task); its figures are metrics DVC shows, and they are our eval_hellaswag scoring's."""
    pytest.importorskip("lm_eval")
    from llm_core.config import SourceConfig
    from llm_core.data import sources
    from llm_core.data.tokenizer import Tokenizer
    from llm_core.evaluation import hellaswag
    from llm_core.model.io import load_model

    (repo / "tasks").mkdir()
    (repo / "tasks/hellaswag_fixture.yaml").write_text(hellaswag_task_yaml("hellaswag_fixture", HELLASWAG_FIXTURE))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["eval"].update(harness_tasks=["hellaswag_fixture"], harness_include="tasks")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run([sys.executable, "-m", "dvc", "repro"], repo, **offline_harness_env(tmp_path / "datasets"))
    assert ran_stages(out) == ["eval_harness"]
    figures = json.loads((repo / "metrics/harness.json").read_text())
    assert figures["hellaswag_fixture_num_items"] == 10
    items = list(sources.iter_records("hellaswag", SourceConfig(source="local", paths=[str(HELLASWAG_FIXTURE)]), 0, {}))
    ours = hellaswag.score_items(load_model(repo / "models/pretrain"), items,
                                 Tokenizer.from_dir(repo / "models/tokenizer"))
    assert figures["hellaswag_fixture_acc"] == pytest.approx(ours["acc"])
    assert figures["hellaswag_fixture_acc_norm"] == pytest.approx(ours["acc_norm"])
    report = json.loads((repo / "metrics/harness_report.json").read_text())
    assert "acc_norm_stderr,none" in report["results"]["hellaswag_fixture"]
    shown = json.loads(run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], repo))
    assert "hellaswag_fixture_acc_norm" in json.dumps(shown)


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
