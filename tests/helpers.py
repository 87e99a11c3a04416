"""Small builders shared by tests."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from llm_core.config import ModelConfig


def tiny_model_config(vocab_size: int = 512, **overrides) -> ModelConfig:
    base = dict(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=64)
    base.update(overrides)
    return ModelConfig(preset="tiny", **base).resolved(vocab_size)


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


def project_env(**extra: str) -> dict:
    """The environment stage commands need: this interpreter's `python` first on PATH, as the Makefile does."""
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra)


def pipeline_copy(dst: Path, overrides: dict) -> Path:
    """Code, dvc.yaml and .dvc config copied into `dst` (a fresh git repo) with params.yaml = committed + overrides."""
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
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    return dst


def run_ok(cmd: list[str], cwd: Path, timeout: float | None = None, **env: str) -> str:
    """Run a command with the project environment; its output, or a failure that shows the end of it."""
    proc = subprocess.run(cmd, cwd=cwd, env=project_env(**env), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-4000:]}"
    return out
