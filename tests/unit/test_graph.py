"""dvc.yaml declares exactly the code each stage runs (computed from the import closure of its script)."""

import yaml

from tests.pipeline_graph import ROOT, closure, code_report, stage_scripts


def test_every_stage_declares_the_code_it_imports():
    missing, unused = code_report()
    assert not missing, "dvc.yaml is missing deps:\n" + "\n".join(missing)
    assert not unused, "dvc.yaml declares code nothing imports:\n" + "\n".join(unused)


def test_closure_follows_imports_inside_functions():
    # data/loader.py imports shards only inside functions; the closure still reaches it
    rel = {p.relative_to(ROOT).as_posix() for p in closure(ROOT / "stages/pretrain.py")}
    assert {"llm_core/data/shards.py", "llm_core/data/loader.py", "llm_core/training/loop.py"} <= rel
    sample = {p.relative_to(ROOT).as_posix() for p in closure(ROOT / "stages/sample.py")}
    assert "llm_core/training/loop.py" not in sample  # sampling never pulls in the training stack


def test_removing_any_dep_line_fails_naming_stage_and_line(tmp_path):
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert set(stage_scripts()) == set(spec["stages"])
    for stage in ("eval_hellaswag", "pretrain", "sample"):
        broken = yaml.safe_load((ROOT / "dvc.yaml").read_text())
        deps = broken["stages"][stage]["deps"]
        victim = next(d for d in deps if d.startswith("llm_core/") and d != "llm_core/model/attention")
        deps.remove(victim)
        path = tmp_path / f"{stage}.yaml"
        path.write_text(yaml.safe_dump(broken))
        missing, _ = code_report(path)
        assert f"stage {stage}: add `- {victim}` to its deps" in missing


def test_unused_declaration_is_reported(tmp_path):
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    spec["stages"]["sample"]["deps"].append("llm_core/training/loop.py")
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump(spec))
    _, unused = code_report(path)
    assert unused == ["stage sample: `llm_core/training/loop.py` is declared but nothing it runs imports it"]


BASE = {"config", "errors", "files", "figures"}
ALLOWED = {  # what each part of the core may import (besides itself); imports go one way, top to bottom
    "config": BASE, "errors": BASE, "files": BASE, "figures": BASE, "cli": BASE, "distributed": BASE,
    "data": BASE, "model": BASE,
    "inference": BASE | {"model", "data", "cli"},  # cli: llm-chat and llm-serve end on user mistakes as stages do
    "evaluation": BASE | {"model", "data", "inference", "distributed"},
    "export": BASE | {"model", "data"},
    "training": BASE | {"model", "data", "inference", "evaluation", "distributed"},
}


def test_imports_go_one_way():
    from tests.pipeline_graph import _imports

    wrong = []
    for path in sorted((ROOT / "llm_core").rglob("*.py")):
        rel = path.relative_to(ROOT / "llm_core")
        part = rel.parts[0].removesuffix(".py")
        if part == "__init__":
            continue
        for mod in _imports(path):
            parts = mod.split(".")
            if parts[0] == "stages":
                wrong.append(f"{rel} imports {mod}")
            elif len(parts) > 1 and parts[1] != part and parts[1] not in ALLOWED[part]:
                wrong.append(f"{rel} imports {mod}")
    assert not wrong, "\n".join(wrong)


def test_no_core_module_is_too_long():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in (ROOT / "llm_core").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 650]
    assert not long, long
