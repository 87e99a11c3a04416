"""A short pretraining run through the real stages: tokens/s and MFU as the stage's run-info file reports them.

The run happens in a scratch project folder: `params.yaml` is the committed one with the benchmark's overrides, and
the commands are the ones `dvc.yaml` lists for `download_pretrain`, `download_probe`, `train_tokenizer`, `tokenize`
and `pretrain`,
run in that order with the repository's code (no `dvc` process, so no `dvc.lock` or cache is touched). On CUDA the
model is the `124m` preset on the built-in data (bf16 + torch.compile, as `precision: auto` / `compile: auto` pick);
without CUDA a tiny model proves the command end to end.

Two throughputs are reported, because they answer different questions:
- `tokens_per_sec` / `mfu`: the stage's own figures from `metrics/runtime/pretrain.json`, tokens over the run's
  training time (compilation included; validation and checkpoint writes are timed apart there), what a user of the
  stage gets;
- `steady_tokens_per_sec` / `steady_mfu`: the median of the per-step curves (dvclive `train/tokens_per_sec`,
  `train/mfu`) over the second half of the steps, the loop's speed once compiled.

    python bench/pretrain_stage.py                       # 124m, 50 steps on a GPU; tiny on CPU
    python bench/pretrain_stage.py --steps 100 --set pretrain.optimizer=adamw --keep /tmp/run

The last line of output is a JSON object. Record GPU numbers in bench/RESULTS.md with date and hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("download_pretrain", "download_probe", "train_tokenizer", "tokenize", "pretrain")

# num_docs: ~250 tokens per story, so 8000 stories hold ~2M tokens, more than 50 steps of 16 x 1024 read
GPU = {
    "data": {"num_docs": 8000},
    "model": {"preset": "124m"},
    "pretrain": {"batch_size": 16, "seq_len": 1024, "warmup_steps": 10, "global_eval_tokens": 32768},
}
CPU = {
    "data": {"num_docs": 200, "val_fraction": 0.1},
    "tokenizer": {"vocab_size": 512},
    "model": {"preset": "tiny", "n_layers": 2, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64},
    # eager: `--tiny` on a GPU is a smoke test, not worth a compilation
    "pretrain": {"batch_size": 4, "seq_len": 32, "warmup_steps": 2, "global_eval_tokens": 128, "compile": False},
}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--tiny", action="store_true", help="the tiny CPU configuration (forced without CUDA)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a params.yaml override on top of the benchmark's, e.g. pretrain.optimizer=adamw (repeat)")
    ap.add_argument("--keep", help="run in this folder and keep it (default: a temporary folder, removed)")
    return ap.parse_args(argv)


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def _dotted(items: list[str]) -> dict:
    """`a.b=1` strings -> {"a": {"b": 1}}, values parsed as YAML as `dvc exp run -S` does."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def params_for(steps: int, tiny: bool, extra: dict) -> dict:
    """The committed params.yaml with the benchmark's overrides."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # one validation pass and one checkpoint, both at the last step: the run measures training, not bookkeeping
    run = {"pretrain": {"steps": steps, "eval_every": steps, "checkpoint_every": steps, "keep_checkpoints": 1},
           "tokenize": {"workers": 1 if tiny else "auto"}}
    return _merge(_merge(_merge(params, CPU if tiny else GPU), run), extra)


def stage_commands() -> list[tuple[str, list[str]]]:
    """(stage, argv) as dvc.yaml runs them, with this interpreter for `python`."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = []
    for name in STAGES:
        argv = shlex.split(spec[name]["cmd"])
        if argv[0] == "python":
            argv[0] = sys.executable
        out.append((name, argv))
    return out


def _curve(live: Path, name: str) -> list[float]:
    tsv = live / "plots" / "metrics" / "train" / f"{name}.tsv"
    if not tsv.exists():
        return []
    return [float(line.split("\t")[-1]) for line in tsv.read_text().splitlines()[1:] if line.strip()]


def _steady(values: list[float]) -> float | None:
    """Median of the second half: the first steps hold compilation and warm-up."""
    half = values[len(values) // 2:]
    return statistics.median(half) if half else None


def run(work: Path, steps: int, tiny: bool, extra: dict) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    params = params_for(steps, tiny, extra)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # the stages import llm_core from this checkout, whatever else is installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    stage_seconds = {}
    for name, argv in stage_commands():
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True)
        stage_seconds[name] = round(time.perf_counter() - t0, 2)
        print(f"  {name:<18} {stage_seconds[name]:>8.2f} s", flush=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            raise SystemExit(f"stage {name} failed (exit {proc.returncode}); command: {shlex.join(argv)}")
    metrics = json.loads((work / "metrics" / "pretrain.json").read_text())
    runtime = json.loads((work / "metrics" / "runtime" / "pretrain.json").read_text())
    live = work / "dvclive" / "pretrain"
    tps, mfu = _curve(live, "tokens_per_sec"), _curve(live, "mfu")
    pre = params["pretrain"]
    return {
        "preset": params["model"]["preset"], "steps": steps, "batch_size": pre["batch_size"],
        "seq_len": pre["seq_len"], "optimizer": pre["optimizer"], "num_params": metrics.get("num_params"),
        "tokens_per_sec": runtime.get("tokens_per_sec"), "mfu": runtime.get("mfu"),
        "steady_tokens_per_sec": _steady(tps), "steady_mfu": _steady(mfu),
        "train_loss": metrics.get("train_loss"), "val_loss": metrics.get("val_loss"),
        "stage_seconds": stage_seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    import torch  # after argument parsing: --help stays instant

    tiny = args.tiny or not torch.cuda.is_available()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"pretrain stage benchmark on {device}: {args.steps} steps, {'tiny' if tiny else GPU['model']['preset']}",
          flush=True)
    extra = _dotted(args.set)
    if args.keep:
        result = run(Path(args.keep), args.steps, tiny, extra)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="pretrain-bench-"))
        try:
            result = run(tmp, args.steps, tiny, extra)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = {"benchmark": "pretrain_stage", "device": device, "tiny": tiny, **result}
    shown = {k: v for k, v in summary.items() if k not in ("benchmark", "stage_seconds")}
    print("  " + ", ".join(f"{k}={round(v, 4) if isinstance(v, float) else v}" for k, v in shown.items()))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
