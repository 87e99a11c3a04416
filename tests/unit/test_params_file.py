"""params.yaml stays in the form DVC's own YAML writer gives it, so an experiment's params differ from main's only in
the keys it sets (`dvc exp run -S`, `dvc exp apply`, `dvc exp branch` carry no reformatting into the next commit);
and DVC reads its YAML files with the C loader."""

import difflib
import shutil

import pytest
import yaml

from tests.helpers import ROOT


def _diff(a: str, b: str) -> list[str]:
    return [ln for ln in difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0)
            if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]


def test_params_is_a_fixed_point_of_dvc_writer(tmp_path):
    from dvc.utils.serialize import modify_yaml

    copy = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", copy)
    with modify_yaml(copy):
        pass  # DVC loads the file round-trip and writes it back, as it does before applying -S overrides
    assert _diff((ROOT / "params.yaml").read_text(), copy.read_text()) == []


@pytest.mark.parametrize("override,line", [
    ("sample.temperature=0.5", "  temperature: 0.5"),
    ("model.n_layers=6", "  n_layers: 6"),
    ("data.url=https://example.com/a.txt", "  url: https://example.com/a.txt"),
    ("pretrain.compile=true", "  compile: true"),
])
def test_an_experiment_changes_one_line(tmp_path, override, line):
    from dvc.utils.hydra import apply_overrides

    copy = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", copy)
    apply_overrides(str(copy), [override])  # what `dvc exp run -S` calls
    before, after = (ROOT / "params.yaml").read_text(), copy.read_text()
    changed = _diff(before, after)
    assert len(changed) == 2, changed  # one line out, one line in
    assert changed[1].startswith("+" + line), changed
    assert "#" in changed[1], "the key's comment is kept"
    # and the values are the same as before apart from that key
    a, b = yaml.safe_load(before), yaml.safe_load(after)
    section, key = override.split("=")[0].split(".")
    a[section].pop(key), b[section].pop(key)
    assert a == b


def test_dvc_reads_yaml_with_the_c_loader():
    """ruamel.yaml.clib is a dependency: DVC parses dvc.yaml and dvc.lock (`YAML(typ="safe")`) in every command, and
    without the C parser that takes about a second more per `dvc status` / `dvc repro` on this pipeline."""
    from ruamel.yaml import YAML

    assert YAML(typ="safe").Parser.__name__ == "CParser"
