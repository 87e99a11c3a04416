"""Peak memory (RSS) of the tokenize stage at 1x and 8x the text: streaming must keep it flat.

    python bench/tokenize_memory.py TEXT_DIR [--encoding cp1252] [--scale 8]
    python bench/tokenize_memory.py --smoke      # a few built-in stories at 1x and 2x: proves the command (seconds)

The corpus is downloaded to parquet and a tokenizer trained once; then `python -m stages.tokenize pretrain` runs in
a subprocess on the 1x and the 8x corpus. Its memory is sampled every 20 ms as the sum of the RSS of the stage and
its worker processes (psutil); getrusage(RUSAGE_CHILDREN) gives the largest single process as a cross-check.
Prints a JSON object as its last line; key peak_rss_ratio_8x = peak at 8x / peak at 1x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpus import write_corpus  # noqa: E402
from llm_core.config import DataConfig  # noqa: E402
from llm_core.data import sources  # noqa: E402
from llm_core.data.tokenizer import train_tokenizer  # noqa: E402


def corpus(text_dir: str, encoding: str, scale: int, out: Path) -> Path:
    (out / "text").mkdir(parents=True)
    for k in range(scale):
        for f in sorted(Path(text_dir).glob("*.txt")):
            (out / "text" / f"{k}-{f.name}").symlink_to(f.resolve())
    data = DataConfig(source="local", paths=[str(out / "text")], encoding=encoding)
    sources.write_dataset("pretrain", data, out / "raw")
    return out / "raw"


def peak_rss(cmd: list[str], cwd: Path) -> tuple[int, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.Error:  # a process ended between listing and sampling
            pass
        time.sleep(0.02)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()[-3000:]}")
    return peak, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text_dir", nargs="?", help="a folder of .txt files (not with --smoke)")
    ap.add_argument("--encoding", default="utf-8")
    ap.add_argument("--scale", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--shard-tokens", type=int, default=10_000_000, help="tokenize.shard_tokens")
    ap.add_argument("--smoke", action="store_true", help="built-in stories, scale 2, vocab 300")
    args = ap.parse_args()
    if args.smoke:
        args.scale, args.vocab = 2, 300
    elif not args.text_dir:
        ap.error("TEXT_DIR is required (or --smoke)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.smoke:
            args.text_dir = write_corpus(tmp / "smoke")
        raw = {1: corpus(args.text_dir, args.encoding, 1, tmp / "x1"),
               args.scale: corpus(args.text_dir, args.encoding, args.scale, tmp / f"x{args.scale}")}
        train_tokenizer(sources.iter_texts(raw[1], "train"), args.vocab, tmp / "tok")
        (tmp / "params.yaml").write_text(f"tokenize:\n  shard_tokens: {args.shard_tokens}\n  workers: auto\n")
        result = {"bench": "tokenize_memory", "smoke": args.smoke, "scale": args.scale}
        for k, path in raw.items():
            cmd = [sys.executable, "-m", "stages.tokenize", "pretrain", "--raw", str(path), "--tokenizer",
                   str(tmp / "tok"), "--out", str(tmp / f"tokens{k}")]
            peak, secs = peak_rss(cmd, tmp)
            manifest = json.loads((tmp / f"tokens{k}" / "manifest.json").read_text())
            result[f"tokens_{k}x"] = sum(f["tokens"] for f in manifest["files"].values())
            result[f"peak_rss_mb_{k}x"] = round(peak / 2**20, 1)
            result[f"seconds_{k}x"] = round(secs, 2)
        result["max_single_process_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
        result[f"peak_rss_ratio_{args.scale}x"] = round(result[f"peak_rss_mb_{args.scale}x"] / result["peak_rss_mb_1x"],
                                                        3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
