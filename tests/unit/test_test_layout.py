"""Tests share code through helper modules (tests/helpers.py, tests/serving.py, tests/pipeline_graph.py, workers such as
tests/integration/dist_worker.py), never by importing another test module or a conftest: a test module can then be
renamed, split or deleted without breaking an unrelated one."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module)
            mods |= {f"{node.module}.{a.name}" for a in node.names}  # `from tests.unit import test_x`
    return mods


def is_test_module(module: str) -> bool:
    last = module.split(".")[-1]
    return module.startswith("tests.") and (last.startswith("test_") or last == "conftest")


def test_no_test_module_imports_another():
    wrong = [f"{p.relative_to(TESTS.parent)} imports {m}" for p in sorted(TESTS.rglob("*.py"))
             for m in sorted(imported_modules(p)) if is_test_module(m)]
    assert not wrong, "move what is shared into tests/helpers.py:\n" + "\n".join(wrong)


def test_the_check_sees_both_import_forms(tmp_path):
    bad = tmp_path / "test_bad.py"
    bad.write_text("from tests.unit.test_train import cfg\nfrom tests.integration import conftest\n")
    assert {m for m in imported_modules(bad) if is_test_module(m)} == {"tests.unit.test_train",
                                                                      "tests.integration.conftest"}
