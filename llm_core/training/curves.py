"""Training curves in dvclive's file layout, written without dvclive (a GPU node often has no DVC stack installed).

`PlainLive` is the part of `dvclive.Live` the tracker uses: `log_metric`, `step`, `next_step`, `end`, and the same
files, so `dvc plots` / `dvc metrics` read a run made on such a machine like any other once its folder is back:
- `<dir>/plots/metrics/<name>.tsv`: a `step<TAB><leaf name>` header, then one row per logged step (`train/loss` ->
  `plots/metrics/train/loss.tsv` with the column `loss`); non-finite values written as `nan` / `inf`;
- `<dir>/metrics.json`: the latest value of every metric nested by its path, plus `step` (4-space indent).
A fresh run clears the curves and the summary; `resume=True` keeps them and appends (the tracker first truncates
the steps a resumed run will redo). tests/unit/test_gpu_ready.py compares the files with dvclive's own.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path


class PlainLive:
    def __init__(self, dir: str | Path, resume: bool = False, **_dvclive_options):
        self.dir = Path(dir)
        self.plots_dir = self.dir / "plots" / "metrics"
        self.metrics_file = self.dir / "metrics.json"
        self.summary: dict = {}
        self.step = 0
        if resume and self.metrics_file.exists():
            self.summary = json.loads(self.metrics_file.read_text())
        elif not resume:
            shutil.rmtree(self.plots_dir, ignore_errors=True)
            self.metrics_file.unlink(missing_ok=True)

    def log_metric(self, name: str, val: float | str) -> None:
        if not isinstance(val, str) and (math.isnan(val) or math.isinf(val)):
            val = str(val)  # as dvclive: JSON has no NaN, and the TSV reads the same either way
        path = self.plots_dir / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with open(path, "a", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator=os.linesep)
            if new:
                writer.writerow(["step", os.path.basename(name)])
            writer.writerow([self.step, val])
        node = self.summary
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = val

    def make_summary(self) -> None:
        self.summary["step"] = self.step
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_file.write_text(json.dumps(self.summary, indent=4) + "\n")

    def next_step(self) -> None:
        self.make_summary()
        self.step += 1

    def end(self) -> None:
        if "step" in self.summary:  # as dvclive: after next_step, the summary keeps the last logged step
            self.step = self.summary["step"]
        self.make_summary()
