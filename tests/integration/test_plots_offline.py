"""`dvc plots show` / `dvc plots diff` pages render with no network: the page template inlines Vega, Vega-Lite and
Vega-Embed. Checked in a real headless Chromium whose network is cut (every request goes to a dead proxy): every
chart that dvc.yaml's top-level `plots:` defines shows its title and axis labels and draws one line per curve file
(per revision, in a diff)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, pipeline_copy, run_ok

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install -y chromium")


PLOTS = [next(iter(p.items())) for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]]


def rendered(page: Path) -> str:
    """The page's DOM after its scripts ran, with no network."""
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
                          "--proxy-bypass-list=<-loopback>", "--virtual-time-budget=15000", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    return dom[dom.rfind("<body"):]


def lines(html: str, rev: str = "") -> int:
    """Lines (of revision `rev`, if given) drawn in `html`'s SVG charts."""
    # a drawn line: a path of role "line mark" through several points ("M x,y L x,y ..."), labelled with its revision
    return len(re.findall(r'<path aria-label="[^"]*rev: [^"]*' + re.escape(rev) + r'[^"]*"[^>]*'
                          r'aria-roledescription="line mark" d="M[^"]*L', html))


def charts(page: Path) -> dict[str, str]:
    """Chart id -> its rendered part of the page (DVC gives each plot a div named after its id)."""
    parts = re.split(r'<div id="([\w-]+)"', rendered(page))
    return dict(zip(parts[1::2], parts[2::2]))


def rendered_lines(page: Path, rev: str = "") -> int:
    return lines(rendered(page), rev)


def curves(repo: Path, scale: float) -> None:
    """Five points in every curve file a chart of dvc.yaml reads, as a training run writes them (`step`, then a
    column named after the file); `scale` makes one run's curves differ from another's."""
    for _, spec in PLOTS:
        for path, column in spec["y"].items():
            tsv = repo / path
            tsv.parent.mkdir(parents=True, exist_ok=True)
            tsv.write_text(f"step\t{column}\n" + "".join(f"{s}\t{scale / s}\n" for s in (10, 20, 30, 40, 50)))


@pytest.fixture
def repo(tmp_path) -> Path:
    repo = pipeline_copy(tmp_path / "repo", {})
    curves(repo, 5.0)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["add", "-A"], cwd=repo, check=True, capture_output=True)
    subprocess.run(git + ["commit", "-qm", "first run"], cwd=repo, check=True, capture_output=True)
    return repo


def test_template_is_the_generator_output(tmp_path, monkeypatch):
    pytest.importorskip("vl_convert")
    sys.path.insert(0, str(ROOT / "tools"))
    import offline_plots_template as gen

    monkeypatch.setattr(gen, "OUT", tmp_path / "page.html")
    gen.main()
    page = (tmp_path / "page.html").read_text()
    assert page == (ROOT / ".dvc/offline_plots.html").read_text()
    assert "{plot_divs}" in page and "{scripts}" not in page and "cdn." not in page.split("<script")[0]


def test_charts_have_titles_labels_and_readable_scales():
    assert len(PLOTS) >= 6
    for name, spec in PLOTS:
        assert spec.get("title") and spec.get("x_label") and spec.get("y_label"), name
    log_scaled = {name for name, spec in PLOTS if spec.get("template") == "log_lines"}
    assert {"pretrain_loss", "sft_loss", "val_bpb", "grad_norm"} <= log_scaled
    template = json.loads((ROOT / ".dvc/plots/log_lines.json").read_text())
    assert template["encoding"]["y"]["scale"]["type"] == "log"
    # train and validation loss of a stage on one chart
    for stage in ("pretrain", "sft"):
        assert set(dict(PLOTS)[f"{stage}_loss"]["y"]) == {f"dvclive/{stage}/plots/metrics/{s}/loss.tsv"
                                                           for s in ("train", "val")}


@needs_browser
def test_plots_show_and_diff_render_without_network(repo):
    dvc = [sys.executable, "-m", "dvc"]
    run_ok(dvc + ["plots", "show", "-o", "show"], repo)
    shown = charts(repo / "show/index.html")
    assert set(shown) == {name for name, _ in PLOTS}
    for name, spec in PLOTS:
        for text in (spec["title"], spec["x_label"], spec["y_label"]):
            assert f">{text}</text>" in shown[name], (name, text)
        assert lines(shown[name], "workspace") == len(spec["y"]), name  # one line per curve file
    curves(repo, 4.0)  # a second run in the workspace, compared with the commit
    run_ok(dvc + ["plots", "diff", "HEAD", "-o", "diff"], repo)
    for name, html in charts(repo / "diff/index.html").items():  # each curve for each revision
        assert lines(html, "HEAD") == lines(html, "workspace") == len(dict(PLOTS)[name]["y"]), name


@needs_browser
def test_dvc_default_template_draws_nothing_offline(repo):
    """The control: DVC's own page loads Vega from a CDN, so with the network cut no chart appears."""
    dvc = [sys.executable, "-m", "dvc"]
    run_ok(dvc + ["config", "--unset", "plots.html_template"], repo)
    run_ok(dvc + ["plots", "show", "-o", "cdn"], repo)
    assert "cdn.jsdelivr.net" in (repo / "cdn/index.html").read_text()
    assert rendered_lines(repo / "cdn/index.html") == 0
