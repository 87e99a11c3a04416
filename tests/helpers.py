"""Small builders shared by tests: the one tiny params override for pipeline copies (`tiny_params`), the one
training config (`train_config`) and model config (`tiny_model_config`), a learnable token stream and its `Job`,
and runners for stage commands and `dvc` on a copy of the repository. Tests import from here (and from
tests/serving.py, tests/pipeline_graph.py), never from one another."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from llm_core.config import ModelConfig, TrainConfig


def tiny_model_config(vocab_size: int = 512, **overrides) -> ModelConfig:
    base = dict(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=64)
    base.update(overrides)
    return ModelConfig(preset="tiny", **base).resolved(vocab_size)


def train_config(**overrides) -> TrainConfig:
    """A training config for tiny in-process runs: 8 steps of 4 x 32 tokens, validation every 4, checkpoints every
    3 (so a run killed at step 5 resumes from step 3)."""
    base = dict(steps=8, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2, eval_every=4, global_eval_tokens=256,
                checkpoint_every=3, keep_checkpoints=5, threads=2)
    base.update(overrides)
    return TrainConfig(**base)


_rng = np.random.default_rng(0)
# a learnable stream: a repeating pattern with noise (ids < 100 of a 512 vocabulary)
STREAM = [((np.arange(20_000) * 7) % 97 + _rng.integers(0, 3, 20_000)).astype(np.uint16)]
VAL = [((np.arange(3_000) * 7) % 97).astype(np.uint16)]


def stream_job(tmp_path: Path, name: str = "run", seq_len: int = 32, **kw):
    """A pretraining `Job` on STREAM / VAL writing to tmp_path/<name> (model) and tmp_path/<name>_live (curves)."""
    from llm_core.data.loader import DocRows
    from llm_core.training.loop import Job

    return Job(DocRows(STREAM, seq_len), DocRows(VAL, seq_len), tmp_path / name, tmp_path / f"{name}_live",
               token_bytes=np.ones(512, dtype=np.int64), data_fingerprint="d", desc="pretrain", **kw)


class Crash(RuntimeError):
    """What `die_at_batch` raises in tests that must tell the simulated death from a real error."""


def decode_in_pieces(model, x):
    """Logits of x (B, 20) through a KV cache: a 7-token prefill, 8 one-token steps, then a 5-token chunk; they must
    equal the full forward pass."""
    import torch

    from llm_core.model.transformer import KVCache

    cache = KVCache.empty(model.cfg, x.shape[0], x.shape[1], "cpu", torch.float32)
    pieces = [model(x[:, :7], cache)]  # prefill
    pieces += [model(x[:, i:i + 1], cache) for i in range(7, 15)]  # one-token decode
    pieces.append(model(x[:, 15:], cache))  # a chunk after decoding
    return torch.cat(pieces, 1), cache


def die_at_batch(monkeypatch, n: int, exc: type[BaseException] = KeyboardInterrupt) -> None:
    """The training loader raises `exc` when asked for its n-th batch: a run killed mid-way. `monkeypatch.undo()`
    (or a new setattr) lets the next run through."""
    from llm_core.data.loader import Loader

    calls = {"n": 0}
    original = Loader.next_batch

    def dying(self):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc()
        return original(self)

    monkeypatch.setattr(Loader, "next_batch", dying)


# --------------------------------------------------------------------------------------------------------------------
# A copy of the repository for tests that run the real `dvc` on tiny params

ROOT = Path(__file__).resolve().parents[1]


def merge(base: dict, over: dict) -> dict:
    """Deep-merge `over` into `base` (params overrides)."""
    for k, v in over.items():
        base[k] = merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


# The one params override for tiny pipelines (on top of the committed params.yaml): seconds per stage on one core,
# every stage of the default pipeline still meaningful (a tokenizer with merges, a model that learns a little, enough
# validation rows and HellaSwag / chat items for the metrics to be fractions). Tests pass only what they test.
TINY_PARAMS = {
    "data": {"num_docs": 300, "sft": {"num_docs": 200}, "hellaswag": {"num_docs": 24}, "probe": {"num_docs": 8},
             "val_fraction": 0.1},
    "tokenizer": {"vocab_size": 600},
    "tokenize": {"workers": 1},  # a process pool costs more than it saves on a tiny corpus
    "model": {"n_layers": 2, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64, "max_seq_len": 256},
    "pretrain": {"steps": 6, "batch_size": 4, "seq_len": 32, "eval_every": 3, "global_eval_tokens": 256,
                 "checkpoint_every": 3, "warmup_steps": 2},
    "sft": {"steps": 3, "batch_size": 2, "seq_len": 256, "eval_every": 3, "global_eval_tokens": 512,
            "warmup_steps": 1},
    "sample": {"max_new_tokens": 8},
    "eval": {"chat_items": 20, "hellaswag_every": 0},
}


def tiny_params(**overrides: dict) -> dict:
    """TINY_PARAMS deep-merged with per-section overrides: `tiny_params(pretrain={"steps": 4})`."""
    return merge(copy.deepcopy(TINY_PARAMS), overrides)


def set_params(repo: Path, over: dict) -> None:
    """Deep-merge `over` into repo/params.yaml."""
    params = merge(yaml.safe_load((repo / "params.yaml").read_text()), over)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def project_env(**extra: str) -> dict:
    """The environment stage commands need: this interpreter's `python` first on PATH, as the Makefile does."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra)


def pipeline_copy(dst: Path, overrides: dict) -> Path:
    """Code, dvc.yaml and .dvc config copied into `dst` (a fresh git repo) with params.yaml = committed + overrides
    (usually `tiny_params(...)`)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("stages", "llm_core", "dvc.yaml", "pyproject.toml"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst / name)
    shutil.copytree(ROOT / ".dvc", dst / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    (dst / "hf").mkdir()  # the default model.init_path (a dependency of import_model), without any downloads
    shutil.copy(ROOT / "hf" / "README.md", dst / "hf" / "README.md")
    shutil.copy(ROOT / "params.yaml", dst / "params.yaml")
    set_params(dst, overrides)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    return dst


def run_ok(cmd: list[str], cwd: Path, timeout: float | None = None, **env: str) -> str:
    """Run a command with the project environment; its output, or a failure that shows the end of it."""
    proc = subprocess.run(cmd, cwd=cwd, env=project_env(**env), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-4000:]}"
    return out


# stage commands as dvc.yaml runs them, with outputs at their default paths
PRETRAIN = ["stages.pretrain", "--tokens", "data/tokens/pretrain", "--tokenizer", "models/tokenizer",
            "--raw", "data/raw/pretrain", "--out", "models/pretrain", "--live", "dvclive/pretrain",
            "--metrics", "metrics/pretrain.json"]
SAMPLE = ["stages.sample", "--model", "models/sft", "--tokenizer", "models/tokenizer", "--out", "metrics/s.json"]


def stage(cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """`python -m <args>` in `cwd` with the project environment; asserts success unless ok=False."""
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=project_env(), capture_output=True, text=True,
                          timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


# --------------------------------------------------------------------------------------------------------------------
# Muon against torch.optim.Muon (tests/unit/test_muon.py and its ZeRO-1 worker processes)

# same shapes (batched together), tall and wide of one oriented shape (one stack, two learning rates), a lone one
MUON_SHAPES = [(64, 64), (64, 64), (64, 64), (128, 64), (64, 128), (128, 64), (48, 80), (24, 24)]


def muon_params(seed: int = 0) -> list:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.1) for s in MUON_SHAPES]


def muon_steps(opt, params: list, steps: int = 4, first: int = 0) -> list:
    """`steps` optimizer steps on fixed pseudo-random gradients (the same on every process)."""
    import torch

    for step in range(first, first + steps):
        gen = torch.Generator().manual_seed(1000 + step)
        for p, s in zip(params, MUON_SHAPES):
            p.grad = torch.randn(s, generator=gen)
        opt.step()
    return params


# lm-evaluation-harness tasks over local files (the harness reads them offline)

HELLASWAG_FIXTURE = ROOT / "tests/fixtures/hellaswag_official_schema.jsonl"


def hellaswag_task_yaml(name: str, items: Path) -> str:
    """A task that is the harness's own hellaswag (preprocessing, choices, metrics) over a local jsonl file."""
    import importlib.util

    official = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks/hellaswag/hellaswag.yaml"
    return (f"include: {official}\ntask: {name}\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    validation: {items}\ntraining_split: null\n"
            "validation_split: validation\n")


def offline_harness_env(cache: Path) -> dict[str, str]:
    """Environment in which the harness and the libraries under it never reach the network."""
    return {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_CACHE": str(cache)}
