"""Logging: dvclive curves (or the same files without dvclive, `curves.py`) and a progress bar on rank 0, throughput
and MFU, and the run's wall time by phase.

Only rank 0 writes (every other rank gets a tracker that does nothing), so curves and metrics are never
interleaved or duplicated across processes. Throughput counts training time only: validation, the HellaSwag probe
and checkpoint writes are timed apart (`Throughput.phase`), so `train/tokens_per_sec` does not dip at every
validation step and the run's figures say where the rest of the time went.
"""

from __future__ import annotations

import contextlib
import platform
import time
from pathlib import Path

import torch
from tqdm import tqdm

from llm_core import figures

# Dense bf16 peak FLOP/s by device name (vendor datasheets, sparsity figures halved); MFU is reported only where the
# peak is known. The form factor matters: H100 / H200 NVL cards (400 W) and the H100 PCIe card (350 W) peak well
# below the SXM modules, whose torch names carry no suffix ("NVIDIA H100 80GB HBM3", "NVIDIA H200").
PEAK_BF16_FLOPS = {
    "H100 PCIe": 756e12, "H800 PCIe": 756e12, "H100 NVL": 835e12, "H200 NVL": 835e12,
    "H200": 989e12, "H100": 989e12, "H800": 989e12, "GH200": 989e12, "A100": 312e12, "A800": 312e12,
    "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10G": 70e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "B200": 2250e12,
}


def peak_flops_for(name: str) -> float:
    """The peak of a device called `name` (torch.cuda.get_device_name), 0 when unknown. The longest matching key
    wins: "H100 NVL" before "H100", "GH200" before "H200"."""
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_FLOPS[key]
    return 0.0


def peak_flops(device: torch.device, override: float = 0.0) -> float:
    if override:
        return override
    if device.type != "cuda":
        return 0.0
    return peak_flops_for(torch.cuda.get_device_name(device))


class Throughput:
    """Tokens/s and MFU over the steps since the last `read` (the first read measures from construction), with the
    time spent inside `phase(...)` blocks left out and summed per phase in `phase_seconds`."""

    def __init__(self, flops_per_token: float, peak: float, world: int = 1):
        self.flops_per_token, self.peak, self.world = flops_per_token, peak, world
        self.t0 = time.perf_counter()
        self.tokens = 0
        self.excluded = 0.0  # seconds of other phases since the last read
        self.phase_seconds: dict[str, float] = {}

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    @contextlib.contextmanager
    def phase(self, name: str):
        """Time a block that is not training (validation, checkpoints): out of the throughput, into phase_seconds."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.excluded += dt
            self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + dt

    def read(self) -> dict:
        now = time.perf_counter()
        dt = max(now - self.t0 - self.excluded, 1e-9)
        tps = self.tokens / dt
        out = {"tokens_per_sec": tps}
        if self.peak:
            out["mfu"] = self.flops_per_token * tps / (self.peak * self.world)
        self.t0, self.tokens, self.excluded = now, 0, 0.0
        return out


def device_info(device: torch.device, processes: int) -> dict:
    """Where a run happened: facts for the run-info file, never for a hashed output."""
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
            "processes": processes, "threads": torch.get_num_threads(), "torch": torch.__version__}


class Tracker:
    def __init__(self, live_dir: str | Path | None, enabled: bool, resume: bool, total: int, start: int, desc: str):
        self.enabled = enabled
        self.live = None
        self.bar = None
        if not enabled:
            return
        if live_dir is not None:
            if resume:
                truncate_history(Path(live_dir), start)
            self.live = _live_class()(str(live_dir), resume=resume, dvcyaml=None, save_dvc_exp=False, report=None)
        self.desc, self.total = desc, total
        self.bar = tqdm(total=total, initial=start, desc=desc, unit="step", disable=None, dynamic_ncols=True)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        if self.bar is not None and self.bar.disable and any(k.startswith("val/") for k in metrics):
            # no terminal (e.g. under `dvc repro` in CI): a plain line at each validation instead of a bar
            print(f"{self.desc}: step {step}/{self.total}: {step_line(metrics)}", flush=True)
        if self.live is not None:
            self.live.step = step
            for key, value in metrics.items():
                self.live.log_metric(key, float(value))
            self.live.next_step()

    def progress(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: figures.fixed(k, v) if isinstance(v, float) else v for k, v in postfix.items()},
                                     refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.live is not None:
            self.live.end()


def step_line(metrics: dict) -> str:
    """`loss 1.2345  lr 0.006000 ...  val_loss 1.2000`: the curves' names without `train/`, `val/` as `val_`."""
    return "  ".join(f"{k.removeprefix('train/').replace('val/', 'val_')} {figures.fixed(k, float(v))}"
                     for k, v in metrics.items())


def truncate_history(live_dir: Path, step: int) -> None:
    """Drop curve points after `step`: a run killed after its last checkpoint logged steps it will redo."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines(keepends=True)
        if not lines:
            continue
        col = lines[0].rstrip("\n").split("\t").index("step")
        kept = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[col]) <= step]
        if len(kept) != len(lines):
            tsv.write_text("".join(kept))


def _live_class():
    try:
        from dvclive import Live  # imported on rank 0 only: it is slow to import
    except ImportError:
        # a machine without the DVC stack (e.g. an offline GPU node): the same files, written by hand
        from llm_core.training.curves import PlainLive

        return PlainLive

    class SafeLive(Live):
        def _init_dvc(self):
            # dvclive inspects the git/DVC repo to link experiments; in a repo without commits (a fresh `git init`)
            # that raises. The curves are plain files that dvc.yaml declares, so they do not need the link.
            try:
                super()._init_dvc()
            except Exception as e:  # noqa: BLE001
                import logging

                logging.getLogger(__name__).warning("dvclive: repository introspection failed (%s); logging files only", e)

    return SafeLive
