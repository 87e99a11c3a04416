"""Everything that needs a GPU, measured by one command that fits a short machine slot and never loses a finished part.

Parts, each a benchmark of this folder run in its own process with its own time limit, most valuable first:

- `env`: card, driver, torch, CUDA, triton and transformers versions (this file, `--env`);
- `train_step` (`train_step.py`): a `124m` training step, bf16 + torch.compile: tokens/s and MFU, ours vs
  `transformers` Llama;
- `attention_hd64`, `attention_hd128` (`attention.py --tune`): the Triton kernel's block sizes picked from a small
  candidate list, then Flash-Attention-2 vs SDPA (flash), bf16 causal, seq 1k/4k/8k: fwd and fwd+bwd TFLOP/s,
  ratio, numerics vs fp32 SDPA;
- `optimizer` (`optimizer.py`): a Muon step on `124m`'s matrices, batched (ours) vs torch.optim.Muon: kernels and ms;
- `pretrain_stage` (`pretrain_stage.py`): 50 steps of the real `pretrain` stage (`124m`): tokens/s and MFU from
  `metrics/runtime/pretrain.json` (training time only);
- `decode` (`decode.py`): greedy decoding tokens/s at batch 1 and 32, ours vs `transformers` `generate`, same exported
  weights;
- `train_step_triton`: the `train_step` model with `model.attention: triton` (eager); not in the default plan
  (`--only train_step_triton`), it runs in tiny mode.

Only what an offline GPU node has is needed: torch, triton, transformers, safetensors, tiktoken, tokenizers, pyarrow,
pyyaml (and their own dependencies); no dvc, dvclive or datasets. Children run with this interpreter
(`sys.executable`). Everything the suite writes goes under `--out DIR` (default `./gpu-suite`):
`gpu_suite.json` (rewritten atomically before and after every part, so whatever stops the suite leaves a valid file
with every part finished so far), `gpu_suite.log` (every part's output), `cache/` (torch.compile's and Triton's
compile caches and the Hugging Face home: a rerun skips most compilation) and `tmp/` (the parts' scratch files,
emptied after each part). A part that fails or runs out of time is recorded as such and the next one starts.
`--resume` keeps the parts a previous run into the same folder finished and runs the rest, for a second slot after a
cut-off one.

Budget: the whole run keeps to `--budget` seconds (8 minutes; `--quick`: 3 minutes, the training step of our model
alone and the two attention parts without tuning), and every part's limit, first compilation included, is set so
that the limits of a mode add up to at most its budget (`budget_table()`): on a cold machine every part of the plan
gets its full limit. The GPU limits are estimates until a GPU run records real times (docs/benchmarks.md).

Without CUDA (or with `--tiny`) the same parts run on tiny shapes, the kernel in Triton's interpreter, so the suite is
proven end to end on any machine (tests/integration/test_gpu_suite.py); those figures say nothing about speed.

    python3 bench/gpu_suite.py --out /scratch/suite            # full suite (at most 8 min on one GPU)
    python3 bench/gpu_suite.py --out /scratch/suite --resume   # the parts a cut-off run did not finish
    python3 bench/gpu_suite.py --quick --out /scratch/quick     # at most 3 min
    python3 bench/gpu_suite.py --show /scratch/suite            # the table of an earlier run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
DEFAULT_OUT = Path("gpu-suite")  # in the current directory
RESULTS, LOG = "gpu_suite.json", "gpu_suite.log"
BUDGET_S = {"full": 480.0, "quick": 180.0, "tiny": 6600.0}
# the env part (torch import, CUDA init, nvidia-smi) runs before the mode is known: a machine without an NVIDIA
# device node is taken for a CPU (tiny mode) from the start; a loaded CPU imports torch slowly
ENV_LIMIT_S = {"full": 30.0, "quick": 30.0, "tiny": 120.0}
# tiny mode proves the suite on a CPU, often one shared with other jobs (a niced test there may get a twentieth of a
# core): its limits only catch a hang, and each part's CPU time is recorded (`cpu_s`), the figure load leaves alone
TINY_LIMIT_S = 900.0
MIN_PART_S = 15.0  # less left than this: a part could not even import torch and compile, so it is skipped
KILL_GRACE_S = 5.0


@dataclass
class Part:
    """One benchmark invocation per mode (`None` leaves the part out of that mode) and its limits, first compilation
    included: `limit_s` on a GPU (full suite), `quick_limit_s` under --quick, `tiny_limit_s` on a CPU. A part with
    `default=False` runs in full mode only when named by `--only`."""

    name: str
    script: str
    full: list[str] | None
    quick: list[str] | None
    tiny: list[str] | None
    limit_s: float
    quick_limit_s: float | None = None
    tiny_limit_s: float = TINY_LIMIT_S
    default: bool = True


@dataclass
class Step:
    """A part ready to run: its command and time limit."""

    name: str
    argv: list[str]
    limit_s: float


# tiny shapes spelled out in full, so that `--tiny` on a GPU is a quick smoke test too (no compilation there)
_TINY_TRAIN = ["--preset", "tiny", "--vocab", "512", "--batch-size", "2", "--seq-len", "32", "--compile", "false",
               "--rounds", "1", "--peak-size", "256"]
_SWEEP = ["--seq", "1024", "4096", "8192"]
# GPU limits: estimates for an H100/H200 host with a cold compile cache (a 124m forward+backward compile ~60 s,
# docs/benchmarks.md), first compilation included.
PARTS = (
    # two compilations (ours, then Hugging Face's model) of ~1 min each dominate this part
    Part("train_step", "train_step.py", full=["--preset", "124m"], quick=["--preset", "124m", "--baseline", "none"],
         tiny=_TINY_TRAIN + ["--steps", "2", "--warmup", "1"], limit_s=150, quick_limit_s=80),
    # tuning compiles ~6 more kernel variants (a few seconds each) before the sweep's 3 lengths
    Part("attention_hd64", "attention.py", full=_SWEEP + ["--head-dims", "64", "--tune"],
         quick=_SWEEP + ["--head-dims", "64"],
         tiny=["--tiny", "--seq", "32", "--head-dims", "64", "--tune", "--tune-seq", "32"],
         limit_s=70, quick_limit_s=35),
    Part("attention_hd128", "attention.py", full=_SWEEP + ["--head-dims", "128", "--tune"],
         quick=_SWEEP + ["--head-dims", "128"],
         # tuning at tiny size is the same code as hd64's (its candidates run through the interpreter: seconds)
         tiny=["--tiny", "--seq", "32", "--head-dims", "128"],
         limit_s=70, quick_limit_s=35),
    Part("optimizer", "optimizer.py", full=[], quick=None, tiny=["--smoke"], limit_s=20),
    Part("pretrain_stage", "pretrain_stage.py", full=["--steps", "50"], quick=None, tiny=["--tiny", "--steps", "4"],
         limit_s=105),
    Part("decode", "decode.py", full=["--batch-sizes", "1", "32", "--repeats", "2"], quick=None,
         tiny=["--preset", "tiny", "--vocab", "512", "--prompt-len", "8", "--new-tokens", "8", "--repeats", "1"],
         limit_s=35),
    Part("train_step_triton", "train_step.py",
         full=["--preset", "124m", "--attention", "triton", "--baseline", "none", "--compile", "false",
               "--steps", "10", "--warmup", "2"], quick=None,
         tiny=_TINY_TRAIN + ["--attention", "triton", "--baseline", "none", "--steps", "1", "--warmup", "0",
                            "--batch-size", "1"],  # the interpreter runs every program of the grid: one row
         limit_s=60, default=False),
)


# --------------------------------------------------------------------------------------------------------------------
# the env part (runs in its own process like the others: the suite itself never initialises CUDA)


def env_report() -> dict:
    import importlib.metadata
    import platform

    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    for pkg in ("triton", "transformers"):
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            info[pkg] = None
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            info["driver"] = None
    return info


def versions_line(env: dict) -> str:
    if env.get("cuda_available"):
        card = (f"{env.get('gpu')} x{env.get('gpu_count')} (sm {env.get('capability')}, {env.get('gpu_memory_gib')} "
                f"GiB, driver {env.get('driver') or '?'})")
    else:
        card = f"no CUDA device: CPU ({env.get('cpus')} cores), tiny shapes, Triton interpreter"
    return (f"{card} | torch {env.get('torch')} (CUDA {env.get('cuda') or '-'}) | triton {env.get('triton') or '-'} | "
            f"transformers {env.get('transformers') or '-'} | python {env.get('python')}")


# --------------------------------------------------------------------------------------------------------------------
# running parts


def part_limit(part: Part, mode: str) -> float:
    return {"tiny": part.tiny_limit_s, "quick": part.quick_limit_s or part.limit_s}.get(mode, part.limit_s)


def plan(mode: str, only: list[str] | None = None) -> list[Step]:
    """The steps of a mode (`full`, `quick` or `tiny`), `env` excluded; `only` names parts to run (in suite order)."""
    steps = []
    for part in PARTS:
        args = getattr(part, mode)
        if args is None and mode == "quick" and only and part.name in only:
            args = part.full  # a part --quick leaves out still runs when named
        if args is None or (only and part.name not in only) or (not only and mode == "full" and not part.default):
            continue
        steps.append(Step(part.name, [sys.executable, str(BENCH / part.script), *args], part_limit(part, mode)))
    return steps


def budget_table() -> dict[str, dict]:
    """Per mode: the default plan's limits, env included, against the budget (they must fit)."""
    out = {}
    for mode, budget in BUDGET_S.items():
        limits = {"env": ENV_LIMIT_S[mode], **{s.name: s.limit_s for s in plan(mode)}}
        out[mode] = {"budget_s": budget, "limits_s": limits, "total_s": sum(limits.values())}
    return out


def child_env(out: Path, cpu_only: bool) -> dict[str, str]:
    """The parts' environment: this checkout's llm_core first, and every file they write under `out`."""
    cache = out / "cache"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1",  # a killed part's log is whole
               TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), TRITON_CACHE_DIR=str(cache / "triton"),
               HF_HOME=str(cache / "huggingface"), TMPDIR=str(out / "tmp"))
    env.setdefault("HF_HUB_OFFLINE", "1")  # GPU nodes are often offline: never wait on the hub
    (out / "tmp").mkdir(parents=True, exist_ok=True)
    if cpu_only:
        env.setdefault("TRITON_INTERPRET", "1")  # read when a kernel is decorated: before the child imports triton
        # tiny shapes gain nothing from threads, and spinning thread pools on a busy CPU cost several times the work
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _last_json(text: str) -> dict | None:
    """The benchmark's result: the last stdout line that is a JSON object."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def _kill_group(proc: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """End the part and everything it started (compile workers, tokenize workers, stage processes)."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _children_cpu() -> float:
    """CPU seconds of the finished child processes (and the descendants they waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_step(step: Step, limit_s: float, log: Path, env: dict[str, str]) -> dict:
    """Run one part with its output appended to `log`; the record that goes into the JSON file."""
    with open(log, "a") as f:
        f.write(f"\n===== {step.name}: {shlex.join(step.argv)} (limit {limit_s:.0f} s)\n")
        f.flush()
        offset = f.tell()
        t0, cpu0 = time.perf_counter(), _children_cpu()
        # its own session: a time-out ends the whole process group, not only the part's first process
        proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc, timed_out = proc.returncode, True
        except BaseException:
            # Ctrl-C or SIGTERM to the suite: the part runs in its own session, so nothing else would stop it
            _kill_group(proc, grace_s=1.0)
            raise
        # a worker the part left behind would hold the GPU during the next part
        _kill_group(proc, grace_s=0.0)
        seconds, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    with open(log) as f:
        f.seek(offset)
        output = f.read()
    result = _last_json(output) if not timed_out else None
    record = {"command": shlex.join(step.argv), "limit_s": round(limit_s, 1), "seconds": round(seconds, 1),
              "cpu_s": round(cpu, 1), "returncode": rc}
    if timed_out:
        record["status"] = "timeout"
    elif rc != 0:
        record["status"] = "failed"
    elif result is None:
        record["status"] = "no result"  # it exited 0 without printing its JSON line
    else:
        record["status"] = "ok"
        record["result"] = result
    if record["status"] != "ok":
        record["output_tail"] = output[-3000:]
    return record


def _write(path: Path, report: dict) -> None:
    # a reader, or a suite killed mid-write, sees the old file or the new one, never half of one
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


def _empty(folder: Path) -> None:
    if folder.is_dir():
        for entry in folder.iterdir():
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_steps(steps: list[Step], out: Path, report: dict, budget_s: float, env: dict[str, str],
              echo=print, scratch: Path | None = None) -> dict:
    """Run `steps` in order within `budget_s`, recording each in `report` and saving it to `out` as it goes;
    `scratch` (the parts' TMPDIR, the suite's own folder) is emptied after each part."""
    log = out.with_suffix(".log")
    deadline = time.monotonic() + budget_s
    parts = report.setdefault("parts", {})
    for i, step in enumerate(steps, 1):
        left = deadline - time.monotonic()
        if left < MIN_PART_S:
            parts[step.name] = {"status": "skipped", "reason": f"out of time ({left:.0f} s of the budget left)"}
            echo(f"[{i}/{len(steps)}] {step.name:<18} skipped: out of time")
            _write(out, report)
            continue
        limit = min(step.limit_s, left)
        parts[step.name] = {"status": "running", "started": _now(), "limit_s": round(limit, 1)}
        _write(out, report)  # if the whole suite is killed now, the file still says which part was running
        try:
            record = run_step(step, limit, log, env)
        except BaseException:
            parts[step.name] = {"status": "interrupted", "started": parts[step.name]["started"],
                                "limit_s": round(limit, 1)}
            _write(out, report)
            raise
        parts[step.name] = record
        _write(out, report)
        if scratch is not None:
            _empty(scratch)  # a part ended by its time limit leaves its scratch files behind
        echo(f"[{i}/{len(steps)}] {step.name:<18} {record['status']:<9} {record['seconds']:>6.1f} s", flush=True)
    report["finished"] = _now()
    _write(out, report)
    return report


# --------------------------------------------------------------------------------------------------------------------
# the table


def _f(value, spec: str) -> str:
    """`format(value, spec)`, or a dash as wide as the spec's width for a missing value."""
    if value is None:
        width = "".join(c for c in spec.split(".")[0] if c.isdigit())
        return "-".rjust(int(width or 1))
    return format(value, spec)


def _result(report: dict, name: str) -> dict | None:
    part = report.get("parts", {}).get(name, {})
    return part.get("result") if part.get("status") == "ok" else None


def _attention_lines(report: dict) -> list[str]:
    rows = [r for name in ("attention_hd64", "attention_hd128")
            for r in (_result(report, name) or {}).get("results", [])]
    if not rows:
        return []
    dtype = (_result(report, "attention_hd64") or _result(report, "attention_hd128") or {}).get("dtype", "?")
    lines = [f"Attention, {dtype} causal: TFLOP/s, ratio = ours / SDPA (flash); err = max |error| of output and "
             "gradients vs fp32 SDPA",
             f"{'hdim':>5} {'seq':>6} {'batch':>5} | {'fwd ours':>9} {'sdpa':>9} {'ratio':>6} | {'f+b ours':>9} "
             f"{'sdpa':>9} {'ratio':>6} | {'err ours':>8} {'err sdpa':>8} {'ok':>3}"]
    for r in rows:
        err_ours = max(r.get("err_out_ours", 0), r.get("err_grad_ours", 0))
        err_sdpa = max(r.get("err_out_sdpa", 0), r.get("err_grad_sdpa", 0))
        lines.append(f"{r['head_dim']:>5} {r['seq']:>6} {r['batch']:>5} | {_f(r.get('ours_fwd_tflops'), '9.3g')} "
                     f"{_f(r.get('sdpa_fwd_tflops'), '9.3g')} {_f(r.get('ratio_fwd'), '6.2f')} | "
                     f"{_f(r.get('ours_fwd_bwd_tflops'), '9.3g')} {_f(r.get('sdpa_fwd_bwd_tflops'), '9.3g')} "
                     f"{_f(r.get('ratio_fwd_bwd'), '6.2f')} | {err_ours:>8.1e} {err_sdpa:>8.1e} "
                     f"{'yes' if r.get('numerics_ok') else 'NO':>3}")
    return lines


def _train_lines(report: dict) -> list[str]:
    step, triton = _result(report, "train_step"), _result(report, "train_step_triton")
    base = step or triton
    if not base:
        return []
    lines = [f"Training step: {base['preset']} ({base['num_params'] / 1e6:.1f}M params, vocab {base['vocab']}), batch "
             f"{base['batch_size']} x {base['seq_len']}, {base['precision']}, compile={base['compile']}",
             f"{'model':<26} {'step ms':>9} {'tokens/s':>11} {'MFU':>6} {'peak GiB':>9}"]
    rows = []
    if step:
        rows.append((f"ours ({step.get('attention')})", step.get("ours")))
        rows.append(("transformers Llama (sdpa)", step.get("hf_llama")))
    if triton:
        rows.append(("ours (triton attention)", triton.get("ours")))
    for label, r in rows:
        if r:
            lines.append(f"{label:<26} {_f(r.get('step_ms'), '9.1f')} {_f(r.get('tokens_per_sec'), '11.0f')} "
                         f"{_f(r.get('mfu'), '6.1%')} {_f(r.get('peak_mem_gib'), '9.1f')}")
    return lines


def _decode_lines(report: dict) -> list[str]:
    d = _result(report, "decode")
    if not d:
        return []
    lines = [f"Decoding: {d['preset']} ({d['num_params'] / 1e6:.1f}M params), {d['dtype']}, prompt {d['prompt_len']} + "
             f"{d['new_tokens']} new tokens, greedy, eager",
             f"{'batch':>5} {'ours tok/s':>11} {'hf tok/s':>11} {'ours/hf':>8} {'agree':>6}  ours path"]
    for r in d.get("results", []):
        lines.append(f"{r['batch']:>5} {_f(r.get('ours_tokens_per_sec'), '11.1f')} "
                     f"{_f(r.get('hf_tokens_per_sec'), '11.1f')} "
                     f"{_f(r.get('ratio'), '8.2f')} {_f(r.get('tokens_agree'), '6.2f')}  {r.get('ours_path')}")
    return lines


def _pretrain_lines(report: dict) -> list[str]:
    p = _result(report, "pretrain_stage")
    if not p:
        return []
    stages = ", ".join(f"{k} {v:.1f}" for k, v in (p.get("stage_seconds") or {}).items())
    return [f"Pretrain stage: {p['preset']}, {p['steps']} steps of {p['batch_size']} x {p['seq_len']}, "
            f"{p['optimizer']}; seconds per stage: {stages}",
            f"{'':<12} {'tokens/s':>11} {'MFU':>6}",
            f"{'whole run':<12} {_f(p.get('tokens_per_sec'), '11.0f')} {_f(p.get('mfu'), '6.1%')}   "
            "(metrics/runtime/pretrain.json: training time, compile included)",
            f"{'steady':<12} {_f(p.get('steady_tokens_per_sec'), '11.0f')} {_f(p.get('steady_mfu'), '6.1%')}   "
            "(median of the per-step curve, second half)"]


def _tuning_lines(report: dict) -> list[str]:
    tuned = {hd: t for name in ("attention_hd64", "attention_hd128")
             for hd, t in ((_result(report, name) or {}).get("tuning") or {}).items()}
    if not tuned:
        return []
    lines = ["Kernel block sizes tuned (llm_core/model/attention/flash_config.py): best of each kernel's candidates; "
             "speedup = table's config time / best",
             f"{'hdim':>5} {'kernel':<6} {'table (M, N, warps, stages)':<28} {'best':<20} {'speedup':>8} {'ok':>3}"]
    for hd, t in tuned.items():
        for kernel, k in t.get("kernels", {}).items():
            def short(c):
                return f"{c['BLOCK_M']}, {c['BLOCK_N']}, {c['num_warps']}, {c['num_stages']}"
            lines.append(f"{hd:>5} {kernel:<6} {short(k['table']):<28} {short(k['best']):<20} "
                         f"{_f(k.get('speedup_vs_table'), '8.2f')} {'yes' if t.get('numerics_ok') else 'NO':>3}")
    return lines


def _optimizer_lines(report: dict) -> list[str]:
    o = _result(report, "optimizer")
    if not o:
        return []
    lines = [f"Muon step, {o['matrices']} matrices of {o['preset']} (kernels) and {o['time_preset']} (ms): "
             f"torch / ours = {o['ratio_ops']}x kernels, {o['ratio_time']}x time",
             f"{'optimizer':<22} {'kernels':>8} {'ms':>9}"]
    for name, label in (("torch", "torch.optim.Muon"), ("ours", "ours (batched)")):
        lines.append(f"{label:<22} {o['ops'][name]['kernels']:>8} {_f(o['time'][name].get('step_ms'), '9.3f')}")
    return lines


def render(report: dict) -> str:
    parts = report.get("parts", {})
    lines = [f"GPU suite ({report.get('mode')}), {report.get('started')}: {report.get('versions', '?')}", "",
             f"{'part':<20} {'status':<10} {'seconds':>8} {'cpu s':>7} {'limit':>6}"]
    for name, rec in parts.items():
        lines.append(f"{name:<20} {rec.get('status', '?'):<10} {_f(rec.get('seconds'), '8.1f')} "
                     f"{_f(rec.get('cpu_s'), '7.1f')} {_f(rec.get('limit_s'), '6.0f')}")
    for section in (_train_lines, _attention_lines, _tuning_lines, _optimizer_lines, _pretrain_lines, _decode_lines):
        block = section(report)
        if block:
            lines += [""] + block
    if report.get("mode") == "tiny":
        lines += ["", "tiny mode: shapes and the Triton interpreter prove the suite runs; the figures say nothing "
                      "about GPU speed"]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# the command


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the ~3-minute subset")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes even on a GPU (forced without CUDA)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"folder for everything the suite writes (default ./{DEFAULT_OUT}): {RESULTS}, {LOG}, "
                         "cache/, tmp/")
    ap.add_argument("--budget", type=float, help="seconds for the whole run (default 480, --quick 180)")
    ap.add_argument("--only", nargs="+", choices=[p.name for p in PARTS], help="run these parts only")
    ap.add_argument("--resume", action="store_true", help="keep the parts --out already holds as ok, run the rest")
    ap.add_argument("--show", type=Path, metavar="DIR", help="print the table of an earlier run (its --out folder or "
                    "JSON file) and exit")
    ap.add_argument("--env", action="store_true", help=argparse.SUPPRESS)  # the env part itself
    args = ap.parse_args(argv)
    if args.out.suffix == ".json" or args.out.is_file():
        ap.error(f"--out is a folder (it holds {RESULTS}, {LOG} and the compile caches), got {args.out}; "
                 f"pass a folder, e.g. --out {args.out.with_suffix('')}")
    return args


def stop_on_sigterm() -> None:
    """SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C: the running part is ended and recorded as interrupted."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    stop_on_sigterm()
    if args.env:
        info = env_report()
        print(versions_line(info))
        print(json.dumps(info))
        return 0
    if args.show:
        path = args.show / RESULTS if args.show.is_dir() else args.show
        print(render(json.loads(path.read_text())))
        return 0

    folder = args.out.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    out, log = folder / RESULTS, folder / LOG
    previous = json.loads(out.read_text()) if args.resume and out.exists() else None
    if not args.resume:
        log.unlink(missing_ok=True)
    started = time.monotonic()
    gpu_likely = not args.tiny and (Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None)
    env_step = Step("env", [sys.executable, str(Path(__file__).resolve()), "--env"],
                    ENV_LIMIT_S["quick" if args.quick else "full"] if gpu_likely else ENV_LIMIT_S["tiny"])
    env_record = run_step(env_step, env_step.limit_s, log, child_env(folder, cpu_only=False))
    env = env_record.get("result") or {}
    cpu_only = not env.get("cuda_available", False)
    mode = "tiny" if args.tiny or cpu_only else "quick" if args.quick else "full"
    if env_record["status"] != "ok":
        print(f"the env part failed ({env_record['status']}); see {log}:\n{env_record.get('output_tail', '')[-1500:]}")
    print(f"GPU suite, {mode}: {versions_line(env)}\nwriting to {folder}", flush=True)

    report = {"suite": "gpu_suite", "mode": mode, "started": _now(), "command": shlex.join([sys.executable, *sys.argv]),
              "versions": versions_line(env), "parts": {"env": env_record}}
    steps = plan(mode, args.only)
    if previous and previous.get("mode") == mode and previous.get("versions") == report["versions"]:
        kept = {k: v for k, v in previous.get("parts", {}).items() if k != "env" and v.get("status") == "ok"}
        report["parts"].update(kept)
        steps = [s for s in steps if s.name not in kept]
        print(f"resuming {folder}: kept {', '.join(kept) or 'nothing'}")
    elif previous:
        print(f"not resuming {folder}: it was made in another mode or on another machine")
    budget = args.budget or BUDGET_S[mode]
    report["budget_s"] = budget
    try:
        run_steps(steps, out, report, budget - (time.monotonic() - started), child_env(folder, cpu_only),
                  scratch=folder / "tmp")
    except (KeyboardInterrupt, SystemExit) as stop:
        print("\n" + render(report))
        print(f"\ninterrupted: the parts finished so far are in {out}; `--resume` runs the rest")
        return 130 if isinstance(stop, KeyboardInterrupt) else int(stop.code or 1)
    print("\n" + render(report))
    print(f"\nresults: {out}\nlog:     {log}")
    failed = [k for k, v in report["parts"].items() if v.get("status") != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
