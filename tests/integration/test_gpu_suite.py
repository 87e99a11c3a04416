"""bench/gpu_suite.py: the whole suite in its tiny CPU mode on a machine without the DVC stack (an offline GPU node
has only the GPU stack), everything it writes under --out, and how it keeps the finished parts when one fails."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT

PARTS = ["env", "train_step", "attention_hd64", "attention_hd128", "optimizer", "pretrain_stage", "decode",
         "train_step_triton"]
# not installed on an offline GPU node (only torch, triton, transformers, safetensors, tiktoken, tokenizers, pyarrow,
# pyyaml, psutil and their dependencies): importing any of them must fail there, as it does in the test
NOT_ON_A_GPU_NODE = ("dvc", "dvc_data", "dvclive", "datasets", "starlette", "uvicorn")


def _suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "bench" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def offline_node_env(folder: Path) -> dict:
    """An environment in which the packages a GPU node lacks cannot be imported: a package of each name, first on
    PYTHONPATH (so every child process inherits it), whose import raises ModuleNotFoundError."""
    for name in NOT_ON_A_GPU_NODE:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(
            f'raise ModuleNotFoundError("No module named {name!r} (not installed on this GPU node)", name={name!r})\n')
    return dict(os.environ, PYTHONPATH=str(folder))


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/gpu_suite.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=7200, env=env)


@pytest.mark.slow
def test_tiny_suite_runs_every_part_end_to_end_without_the_dvc_stack(tmp_path):
    env = offline_node_env(tmp_path / "offline")
    for name in NOT_ON_A_GPU_NODE:  # the shim works: none of them imports
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True)
        last = probe.stderr.strip().splitlines()[-1]
        assert probe.returncode == 1 and last.startswith(f"ModuleNotFoundError: No module named '{name}'"), last
    folder = tmp_path / "suite"
    proc = _run("--tiny", "--out", str(folder), env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = folder / "gpu_suite.json"
    report = json.loads(out.read_text())
    assert report["mode"] == "tiny" and list(report["parts"]) == PARTS
    assert {k: v["status"] for k, v in report["parts"].items()} == dict.fromkeys(PARTS, "ok")
    res = {k: v["result"] for k, v in report["parts"].items()}

    assert res["env"]["torch"] and "triton" in res["env"]
    for hd in (64, 128):
        (row,) = res[f"attention_hd{hd}"]["results"]
        assert row["head_dim"] == hd and row["numerics_ok"]
        assert row["ratio_fwd"] > 0 and row["ratio_fwd_bwd"] > 0
        assert row["err_out_ours"] < 1e-4 and row["err_grad_ours"] < 1e-4  # fp32 through the interpreter
    tuned = res["attention_hd64"]["tuning"]["64"]  # every candidate of every kernel ran, the winner is sound
    assert tuned["numerics_ok"] and set(tuned["launch_configs"]) == {"fwd", "dkdv", "dq"}
    assert all("ms" in c for k in tuned["kernels"].values() for c in k["candidates"])
    assert res["optimizer"]["ops"]["ours"]["kernels"] < res["optimizer"]["ops"]["torch"]["kernels"]
    step = res["train_step"]
    assert step["ours"]["tokens_per_sec"] > 0 and step["hf_llama"]["tokens_per_sec"] > 0 and step["ratio"] > 0
    assert res["train_step_triton"]["attention"] == "triton" and res["train_step_triton"]["ours"]["tokens_per_sec"] > 0
    decode = res["decode"]["results"]
    assert {1, 32} <= {r["batch"] for r in decode}
    assert all(r["ours_tokens_per_sec"] > 0 and r["hf_tokens_per_sec"] > 0 for r in decode)
    assert all(r["tokens_agree"] == 1.0 for r in decode)  # the same exported weights in fp32: the same tokens
    pre = res["pretrain_stage"]
    assert pre["steps"] == 4 and pre["tokens_per_sec"] > 0 and pre["steady_tokens_per_sec"] > 0
    assert set(pre["stage_seconds"]) == {"download_pretrain", "download_probe", "train_tokenizer", "tokenize",
                                        "pretrain"}

    # the versions and one table per section on stdout; every part's output in the log
    for text in ("torch 2.", "triton", "Attention, fp32 causal", "Training step: tiny", "Decoding: tiny",
                 "Pretrain stage: tiny", "Kernel block sizes tuned", "Muon step"):
        assert text in proc.stdout, text
    log = (folder / "gpu_suite.log").read_text()
    assert all(f"===== {name}:" in log for name in PARTS)
    assert f"{sys.executable} " in log  # the parts run with the suite's interpreter, not whatever `python` is
    # everything under --out: results, log, caches, scratch (the stage benchmark's project folder, removed)
    assert {p.name for p in folder.iterdir()} <= {"gpu_suite.json", "gpu_suite.log", "cache", "tmp"}
    assert not list((folder / "tmp").iterdir())

    # a second run with --resume keeps every finished part and runs only the env part again
    again = _run("--tiny", "--resume", "--out", str(folder), env=env)
    assert again.returncode == 0, again.stdout[-3000:]
    resumed = json.loads(out.read_text())
    assert "kept train_step, attention_hd64, attention_hd128" in again.stdout
    assert all(resumed["parts"][k] == report["parts"][k] for k in PARTS[1:])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def _hang(pid_file: Path) -> str:
    """A part that starts a process of its own, prints a JSON line, then hangs."""
    return ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
            "print('{\"partial\": 1}', flush=True)\n"
            "time.sleep(60)\n")


def _wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def test_a_crash_or_a_time_out_keeps_the_parts_done(tmp_path):
    suite = _suite()
    py = sys.executable
    pid_file = tmp_path / "grandchild.pid"
    hang = _hang(pid_file)
    steps = [
        suite.Step("first", [py, "-c", "print('a table'); print('{\"x\": 1}')"], 30),
        suite.Step("crash", [py, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"], 30),
        suite.Step("hang", [py, "-c", hang], 3),
        suite.Step("silent", [py, "-c", "print('no JSON line')"], 30),
        suite.Step("last", [py, "-c", "print('{\"y\": 2}')"], 30),
    ]
    out = tmp_path / "suite.json"
    report = suite.run_steps(steps, out, {"mode": "test"}, budget_s=120, env=dict(os.environ),
                             echo=lambda *a, **k: None)
    saved = json.loads(out.read_text())
    assert saved == report
    parts = saved["parts"]
    assert {k: v["status"] for k, v in parts.items()} == {
        "first": "ok", "crash": "failed", "hang": "timeout", "silent": "no result", "last": "ok"}
    assert parts["first"]["result"] == {"x": 1} and parts["last"]["result"] == {"y": 2}
    assert parts["crash"]["returncode"] == 3 and "boom" in parts["crash"]["output_tail"]
    assert "partial" in parts["hang"]["output_tail"] and parts["hang"]["seconds"] < 20
    # the time-out ended the part's whole process group, not only its first process
    assert _wait_gone(int(pid_file.read_text()))
    assert "boom" in out.with_suffix(".log").read_text()


def test_parts_past_the_budget_are_skipped_and_a_running_part_is_on_file(tmp_path, monkeypatch):
    suite = _suite()
    monkeypatch.setattr(suite, "MIN_PART_S", 1.0)
    py = sys.executable
    out = tmp_path / "suite.json"
    # a part that reads the suite's file while it runs: a suite killed now would leave that record behind
    probe = f"import json; d = json.load(open({str(out)!r})); print(json.dumps({{'seen': d['parts']['probe']}}))"
    steps = [suite.Step("probe", [py, "-c", probe], 30),
             suite.Step("slow", [py, "-c", "import time; time.sleep(60)"], 100),
             suite.Step("next", [py, "-c", "print('{}')"], 30)]
    report = suite.run_steps(steps, out, {}, budget_s=4.0, env=dict(os.environ), echo=lambda *a, **k: None)
    parts = json.loads(out.read_text())["parts"]
    assert parts["probe"]["result"]["seen"]["status"] == "running"
    assert parts["slow"]["status"] == "timeout" and parts["slow"]["limit_s"] <= 4.0  # what was left of the budget, not its own 100 s
    assert parts["next"]["status"] == "skipped"
    assert "finished" in report


def test_sigterm_to_the_suite_ends_the_running_part_and_records_it(tmp_path):
    out, pid_file = tmp_path / "suite.json", tmp_path / "grandchild.pid"
    runner = (
        "import importlib.util, os, sys\n"
        "from pathlib import Path\n"
        f"spec = importlib.util.spec_from_file_location('gpu_suite', {str(ROOT / 'bench' / 'gpu_suite.py')!r})\n"
        "suite = importlib.util.module_from_spec(spec)\n"
        "sys.modules['gpu_suite'] = suite\n"
        "spec.loader.exec_module(suite)\n"
        "suite.stop_on_sigterm()\n"
        f"steps = [suite.Step('hang', [sys.executable, '-c', {_hang(pid_file)!r}], 60)]\n"
        f"suite.run_steps(steps, Path({str(out)!r}), {{}}, 120, dict(os.environ))\n")
    proc = subprocess.Popen([sys.executable, "-c", runner])
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert json.loads(out.read_text())["parts"]["hang"]["status"] == "interrupted"
    assert _wait_gone(int(pid_file.read_text()))


def test_quick_is_a_subset_of_the_full_suite_and_every_plan_fits_its_budget():
    suite = _suite()
    full = {s.name: s for s in suite.plan("full")}
    quick = {s.name: s for s in suite.plan("quick")}
    assert list(full) == PARTS[1:-1] and list(quick) == ["train_step", "attention_hd64", "attention_hd128"]
    assert all(quick[k].limit_s <= full[k].limit_s for k in quick)
    assert suite.BUDGET_S["full"] == 8 * 60 and suite.BUDGET_S["quick"] == 3 * 60
    # the limits, env included, add up to at most the budget: a cold run gives every part its whole limit
    for mode, row in suite.budget_table().items():
        assert row["total_s"] <= row["budget_s"], (mode, row)
        assert list(row["limits_s"]) == ["env", *(s.name for s in suite.plan(mode))]
    assert [s.name for s in suite.plan("full", only=["decode"])] == ["decode"]
    assert [s.name for s in suite.plan("full", only=["train_step_triton"])] == ["train_step_triton"]  # opt-in
    assert [s.name for s in suite.plan("tiny")] == PARTS[1:]
    # every command names a benchmark of bench/ that exists, run by this interpreter
    assert all(Path(s.argv[1]).is_file() and s.argv[0] == sys.executable
               for mode in ("full", "quick", "tiny") for s in suite.plan(mode))


def test_out_is_a_folder(tmp_path):
    proc = _run("--out", str(tmp_path / "suite.json"))
    assert proc.returncode == 2 and "--out is a folder" in proc.stderr


def test_render_shows_a_failed_part_and_the_sections_it_has(tmp_path):
    suite = _suite()
    report = {"mode": "full", "started": "t", "versions": "NVIDIA H200 | torch 2.x", "parts": {
        "env": {"status": "ok", "seconds": 2.0, "limit_s": 60},
        "decode": {"status": "ok", "seconds": 30.0, "limit_s": 120, "result": {
            "preset": "124m", "num_params": 123_600_000, "dtype": "bfloat16", "prompt_len": 128, "new_tokens": 128,
            "results": [{"batch": 1, "ours_tokens_per_sec": 200.0, "hf_tokens_per_sec": 100.0, "ratio": 2.0,
                         "tokens_agree": 0.9, "ours_path": "generate"}]}},
        "train_step": {"status": "timeout", "seconds": 240.0, "limit_s": 240}}}
    text = suite.render(report)
    assert "NVIDIA H200" in text and "train_step           timeout" in text
    assert "Decoding: 124m" in text and "2.00" in text
    assert "Training step" not in text and "Attention" not in text
