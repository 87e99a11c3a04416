"""What the docs say about DVC holds: single-stage commands say `-s`, the DVC page names every volatile file and the
command of each sharing step, what it points to exists, and the files a user makes with the documented commands are
git-ignored."""

from __future__ import annotations

import re
import subprocess
import tomllib

import yaml

from tests.helpers import ROOT

PAGE = ROOT / "docs/pipeline-and-dvc.md"


def docs() -> dict[str, str]:
    return {p.relative_to(ROOT).as_posix(): p.read_text() for p in [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))]}


def test_forcing_one_stage_says_single():
    # `dvc repro -f <stage>` forces every stage upstream too: after editing a prompts file it retrains the models
    wrong = [f"{name}: {m.group(0)}" for name, text in docs().items()
             for m in re.finditer(r"dvc repro -f (?!-s)[a-z_]\w*", text)]
    assert not wrong, wrong


def test_plot_pages_and_exports_are_git_ignored():
    paths = ["dvc_plots/index.html", "exports/sft-hf/model.safetensors"]
    proc = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.split() == paths


def test_the_dvc_page_lists_the_volatile_files_and_how_to_verify_a_reproduction():
    text = PAGE.read_text()
    assert "a reproduction is verified when `dvc repro` leaves `dvc.lock` unchanged" in text.lower()
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for path in spec["metrics"]:
        assert f"`{path}`" in text, path
    for folder in {"/".join(f.split("/")[:2]) for p in spec["plots"] for f in next(iter(p.values()))["y"]}:
        assert f"`{folder}/`" in text, folder


def test_the_dvc_page_covers_sharing_and_names_real_paths():
    text = PAGE.read_text()
    for command in ("dvc remote add -d", "dvc push", "dvc pull", "dvc exp push", "dvc exp pull", "--run-cache",
                    "dvc checkout", "make exps"):
        assert command in text, command
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("dvc-ssh") for d in extras["ssh"]) and any(d.startswith("dvc-s3") for d in extras["s3"])
    assert '".[ssh]"' in text and '".[s3]"' in text
    # the transcript is a real one: its output, not a placeholder
    assert "TRANSCRIPT" not in text and "Data and pipelines are up to date." in text
    for path in re.findall(r"`((?:tests|llm_core|stages|\.dvc|docs)/[\w./-]+)`", text):
        assert (ROOT / path).exists(), path
