"""`dvc plots show` / `dvc plots diff` pages render with no network: the page template inlines Vega, Vega-Lite and
Vega-Embed. Checked in a real headless Chromium whose network is cut (every request goes to a dead proxy)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, pipeline_copy, run_ok

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install -y chromium")


def rendered_lines(page: Path, rev: str = "") -> int:
    """Lines (of revision `rev`, if given) drawn in the page's SVG charts after its scripts ran, with no network."""
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
                          "--proxy-bypass-list=<-loopback>", "--virtual-time-budget=15000", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    body = dom[dom.find("<body"):]
    # a drawn line: a path of role "line mark" through several points ("M x,y L x,y ..."), labelled with its revision
    return len(re.findall(r'<path aria-label="[^"]*rev: [^"]*' + re.escape(rev) + r'[^"]*"[^>]*'
                          r'aria-roledescription="line mark" d="M[^"]*L', body))


def curves(repo: Path, losses: list[float]) -> None:
    live = repo / "dvclive/pretrain/plots/metrics/train"
    live.mkdir(parents=True, exist_ok=True)
    (live / "loss.tsv").write_text("step\tloss\n" + "".join(f"{i + 1}\t{v}\n" for i, v in enumerate(losses)))


@pytest.fixture
def repo(tmp_path) -> Path:
    repo = pipeline_copy(tmp_path / "repo", {})
    curves(repo, [5.0, 4.0, 3.2, 2.9, 2.5])
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


@needs_browser
def test_plots_show_and_diff_render_without_network(repo):
    dvc = [sys.executable, "-m", "dvc"]
    run_ok(dvc + ["plots", "show", "-o", "show"], repo)
    assert rendered_lines(repo / "show/index.html", "workspace") >= 1
    curves(repo, [5.5, 4.5, 3.0, 2.2, 2.0])  # a second run in the workspace, compared with the commit
    run_ok(dvc + ["plots", "diff", "HEAD", "-o", "diff"], repo)
    # one line per revision: the commit's and the workspace's
    assert rendered_lines(repo / "diff/index.html", "HEAD") >= 1
    assert rendered_lines(repo / "diff/index.html", "workspace") >= 1


@needs_browser
def test_dvc_default_template_draws_nothing_offline(repo):
    """The control: DVC's own page loads Vega from a CDN, so with the network cut no chart appears."""
    dvc = [sys.executable, "-m", "dvc"]
    run_ok(dvc + ["config", "--unset", "plots.html_template"], repo)
    run_ok(dvc + ["plots", "show", "-o", "cdn"], repo)
    assert "cdn.jsdelivr.net" in (repo / "cdn/index.html").read_text()
    assert rendered_lines(repo / "cdn/index.html") == 0
