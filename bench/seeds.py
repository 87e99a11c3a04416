"""How robust is the default run? Pretrain (and score HellaSwag) for several seeds and thread counts.

    python bench/seeds.py                       # seeds 1337 1338 1339 x threads 2 and 1, the default params
    python bench/seeds.py --seeds 1 2 --threads 2 --set pretrain.lr=0.004 --set pretrain.steps=900
    python bench/seeds.py --sft --threads 2     # also fine-tune each pretrained model and score the chat model
    python bench/seeds.py --smoke               # one seed of a tiny model for 2 steps in a scratch folder (seconds)

The data, tokenizer and shards are made once by the stage scripts (in --work, reused across invocations with the same
data params); each run then executes the real `pretrain` and `eval_hellaswag` stages in its own folder with
`pretrain.seed` and `pretrain.threads` overridden. Prints one row per run, then min / median / max of each metric;
the last line is JSON. With `--sft` each run goes on through the real `sft` and `eval_chat` stages (`sft.seed` follows
the pretraining seed) and reports the chat accuracy overall and by question kind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# --smoke: a model and data small enough for seconds per stage (the figures mean nothing)
SMOKE = ["data.num_docs=120", "data.hellaswag.num_docs=8", "tokenizer.vocab_size=300", "tokenize.workers=1",
         "model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1", "model.ffn_hidden=64",
         "pretrain.steps=2", "pretrain.batch_size=2", "pretrain.seq_len=32", "pretrain.eval_every=2",
         "pretrain.global_eval_tokens=64", "pretrain.warmup_steps=1", "eval.hellaswag_every=0"]
METRICS = ("val_bpb", "bpb_gap_to_floor", "val_loss", "acc_norm", "acc", "best_step", "tokens_per_sec", "seconds")


def run(cmd: list[str], cwd: Path, log: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    with open(log, "a") as fh:
        proc = subprocess.run([sys.executable, "-m", *cmd], cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}; see {log}")


def set_key(params: dict, dotted: str, value) -> None:
    node = params
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def prepare(work: Path, params: dict, sft: bool = False) -> Path:
    """Downloaded data, tokenizer and pretraining shards for these data params (made once)."""
    key = hashlib.sha256(json.dumps([params["data"], params["tokenizer"], params["tokenize"], sft],
                                    sort_keys=True).encode()).hexdigest()[:12]
    base = work / f"data-{key}"
    if (base / "DONE").exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    (base / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = base / "log.txt"
    for kind in ("pretrain", "hellaswag", "sft") if sft else ("pretrain", "hellaswag"):
        run(["stages.download", kind, f"data/raw/{kind}"], base, log)
    run(["stages.train_tokenizer", "data/raw/pretrain", "models/tokenizer"], base, log)
    for kind in ("pretrain", "sft") if sft else ("pretrain",):
        run(["stages.tokenize", kind, "--raw", f"data/raw/{kind}", "--tokenizer", "models/tokenizer",
             "--out", f"data/tokens/{kind}"], base, log)
    (base / "DONE").write_text("ok\n")
    return base


def one_run(base: Path, folder: Path, params: dict, sft: bool = False) -> dict:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for sub in ("data", "models/tokenizer"):
        (folder / sub).parent.mkdir(parents=True, exist_ok=True)
        (folder / sub).symlink_to(base / sub)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = folder / "log.txt"
    t0 = time.perf_counter()
    run(["stages.pretrain", "--tokens", "data/tokens/pretrain", "--tokenizer", "models/tokenizer", "--raw",
         "data/raw/pretrain", "--out", "models/pretrain", "--live", "dvclive", "--metrics", "pretrain.json",
         "--runtime", "runtime.json"], folder, log)
    seconds = time.perf_counter() - t0
    run(["stages.eval_hellaswag", "--model", "models/pretrain", "--tokenizer", "models/tokenizer", "--items",
         "data/raw/hellaswag", "--metrics", "hellaswag.json", "--records", "hellaswag_items.jsonl"], folder, log)
    out = json.loads((folder / "pretrain.json").read_text()) | json.loads((folder / "hellaswag.json").read_text())
    out["tokens_per_sec"] = json.loads((folder / "runtime.json").read_text()).get("tokens_per_sec")
    out["seconds"] = seconds
    if sft:
        t0 = time.perf_counter()
        run(["stages.sft", "--tokens", "data/tokens/sft", "--tokenizer", "models/tokenizer", "--init",
             "models/pretrain", "--out", "models/sft", "--live", "dvclive-sft", "--metrics", "sft.json"], folder, log)
        out["sft_seconds"] = time.perf_counter() - t0
        run(["stages.eval_chat", "--model", "models/sft", "--tokenizer", "models/tokenizer", "--sft", "data/raw/sft",
             "--metrics", "chat.json", "--replies", "chat_replies.json"], folder, log)
        out |= {f"chat_{k}": v for k, v in json.loads((folder / "chat.json").read_text()).items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338, 1339])
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="params override for every run (YAML value), e.g. pretrain.lr=0.004")
    ap.add_argument("--work", type=Path, default=Path("/tmp/llm-seeds"))
    ap.add_argument("--tag", default="default", help="name of this configuration (its runs' folder)")
    ap.add_argument("--sft", action="store_true", help="also run sft and eval_chat on each pretrained model")
    ap.add_argument("--smoke", action="store_true", help="seed 1, 1 thread, a tiny model and data (SMOKE), in a "
                    "scratch folder that is removed afterwards")
    args = ap.parse_args()
    if args.smoke:
        args.seeds, args.threads, args.set = [1], [1], SMOKE + args.set
        with tempfile.TemporaryDirectory(prefix="llm-seeds-smoke-") as work:
            args.work = Path(work)
            run_all(args)
    else:
        run_all(args)


def run_all(args: argparse.Namespace) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for item in args.set:
        key, _, value = item.partition("=")
        set_key(params, key, yaml.safe_load(value))
    base = prepare(args.work, params, args.sft)
    results = []
    for threads in args.threads:
        for seed in args.seeds:
            p = json.loads(json.dumps(params))
            set_key(p, "pretrain.seed", seed)
            set_key(p, "pretrain.threads", threads)
            if args.sft:
                set_key(p, "sft.seed", seed + 1)
                set_key(p, "sft.threads", threads)
            res = one_run(base, args.work / args.tag / f"seed{seed}-t{threads}", p, args.sft)
            res.update(seed=seed, threads=threads)
            results.append(res)
            print(f"seed {seed} threads {threads}: " + " ".join(
                f"{k}={v:.4g}" for k, v in res.items()
                if (k in METRICS or k.startswith(("chat_acc", "sft_sec", "acc_norm_"))) and isinstance(v, (int, float))), flush=True)
    summary = {}
    metrics = list(METRICS) + sorted({k for r in results for k in r if k.startswith(("chat_accuracy", "acc_norm_"))} |
                                     ({"sft_seconds"} if args.sft else set()))
    for k in metrics:
        values = [r[k] for r in results if isinstance(r.get(k), (int, float))]
        if values:
            summary[k] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
            print(f"{k:>18}: min {min(values):.4f}  median {statistics.median(values):.4f}  max {max(values):.4f}")
    print(json.dumps({"tag": args.tag, "overrides": args.set, "runs": len(results), "summary": summary,
                      "per_run": [{k: r.get(k) for k in ("seed", "threads", *metrics)} for r in results]}))


if __name__ == "__main__":
    main()
