"""A reproduction is read off dvc.lock, and what the pipeline writes follows the umask.

A second copy of the tiny pipeline (same code, params and data) runs `dvc repro` under umask 002 while the shared
run (conftest `dvc_run`) ran under 022: every output DVC hashes must come out identical, so the two dvc.lock files
are equal; the figures that differ from run to run (throughput, wall time, dates) live only in the volatile files,
which no stage declares as an output. Files are 0644 / 0664 and folders 0755 / 0775, as any other program writes
them under those umasks (safetensors and atomic writes used to make them 0600)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml

from tests.dvc_run import OUTPUT_ROOTS, run_in, run_pipeline
from tests.helpers import ROOT


# the files DVC never hashes: named in dvc.yaml's top-level metrics / plots, written by the stages
VOLATILE = ("metrics/runtime/pretrain.json", "metrics/runtime/sft.json", "metrics/runtime/sample.json",
            "dvclive/pretrain", "dvclive/sft")


def modes(repo: Path) -> tuple[set[int], set[int]]:
    """(file modes, folder modes) of everything the pipeline wrote."""
    files, dirs = set(), set()
    for top in OUTPUT_ROOTS:
        for p in [repo / top, *(repo / top).rglob("*")]:
            (dirs if p.is_dir() else files).add(stat.S_IMODE(p.stat().st_mode))
    return files, dirs


@pytest.fixture(scope="module")
def second_run(tmp_path_factory) -> Path:
    """The same pipeline (code, params, data) run again in another folder, under umask 002."""
    return run_pipeline(tmp_path_factory.mktemp("reproduction"), umask=0o002).path


def test_volatile_files_are_declared_but_never_hashed():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    outs = set()
    for stage in spec["stages"].values():
        for section in ("outs", "metrics", "plots"):
            outs |= {o if isinstance(o, str) else next(iter(o)) for o in stage.get(section, [])}
    top = set(spec["metrics"]) | {f for plot in spec["plots"] for f in next(iter(plot.values()))["y"]}
    for path in VOLATILE:
        assert not any(o == path or o.startswith(path + "/") or path.startswith(o + "/") for o in outs), path
        assert any(t == path or t.startswith(path + "/") for t in top), f"{path}: not shown by dvc metrics / plots"
    # every stage output is persistent: a failed run never makes DVC delete the previous one
    for name, stage in spec["stages"].items():
        for section in ("outs", "metrics"):
            for out in stage.get(section, []):
                assert isinstance(out, dict) and next(iter(out.values())).get("persist"), (name, out)


@pytest.mark.slow
def test_a_second_run_gives_the_same_dvc_lock(dvc_run, second_run):
    assert (second_run / "dvc.lock").read_text() == (dvc_run.path / "dvc.lock").read_text()
    # the run-to-run figures are where they belong, and they did change
    a = json.loads((dvc_run.path / "metrics/runtime/pretrain.json").read_text())
    b = json.loads((second_run / "metrics/runtime/pretrain.json").read_text())
    assert {"tokens_per_sec", "train_seconds", "val_seconds", "checkpoint_seconds", "date"} <= set(a)
    assert a["train_seconds"] != b["train_seconds"]
    # and a rerun with nothing changed runs nothing and leaves dvc.lock as it was
    out = run_in(second_run, "dvc", "repro").stdout
    assert "Running stage" not in out
    assert (second_run / "dvc.lock").read_text() == (dvc_run.path / "dvc.lock").read_text()


@pytest.mark.slow
def test_files_follow_the_umask(dvc_run, second_run):
    assert modes(dvc_run.path) == ({0o644}, {0o755})  # the shared run: umask 022
    assert modes(second_run) == ({0o664}, {0o775})
