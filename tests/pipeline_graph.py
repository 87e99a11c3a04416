"""What each stage really reads, computed from the source: the `llm_core` / `stages` modules its script imports
(transitively, imports inside functions included). Used by the graph test to keep dvc.yaml exact."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OURS = ("llm_core", "stages")


def _module_file(dotted: str) -> Path | None:
    base = ROOT / Path(*dotted.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts)
    return ".".join(parts[:-1])


@functools.cache  # the graph tests ask for the same closures many times; the sources do not change meanwhile
def _imports(path: Path) -> frozenset[str]:
    """Dotted names of our modules that `path` imports anywhere in its source."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                pkg = _package_of(path).split(".")
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from a.b import c` may import the module a.b.c or the name c of a.b
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] not in OURS:
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                found.add(".".join(parts[:i]))
    return frozenset(m for m in found if _module_file(m) is not None)


def closure(script: Path) -> set[Path]:
    """Files of our code that running `script` can execute: its transitive imports (package __init__ files that
    hold only a docstring are left out: editing them changes nothing)."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(_module_file(m) for m in _imports(path))
    return {p for p in seen if not (p.name == "__init__.py" and not _has_code(p))}


def _has_code(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def stage_scripts(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, Path]:
    """stage name -> the script its cmd runs (`python -m stages.x`)."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out = {}
    for name, spec in stages.items():
        m = re.search(r"python -m ([\w.]+)", spec["cmd"])
        assert m, f"stage {name}: cmd does not run `python -m stages.<script>`"
        out[name] = _module_file(m.group(1))
    return out


def declared_code(spec: dict) -> set[str]:
    """The deps of a stage that are our code (files or folders)."""
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])]
    return {d.rstrip("/") for d in deps if d.split("/")[0] in OURS}


def covered(path: Path, declared: set[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d + "/") for d in declared)


def code_report(dvc_yaml: Path = ROOT / "dvc.yaml") -> tuple[list[str], list[str]]:
    """(missing, unused): `stage: - path` lines to add to dvc.yaml, and declarations no import reaches."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    missing, unused = [], []
    for name, script in stage_scripts(dvc_yaml).items():
        needed = closure(script)
        declared = declared_code(stages[name])
        missing += [f"stage {name}: add `- {p.relative_to(ROOT).as_posix()}` to its deps"
                    for p in sorted(needed) if not covered(p, declared)]
        for d in sorted(declared):
            if not any(covered(p, {d}) for p in needed):
                unused.append(f"stage {name}: `{d}` is declared but nothing it runs imports it")
    return missing, unused


def declared_params(spec: dict) -> set[str]:
    out = set()
    for p in spec.get("params", []):
        out |= {p} if isinstance(p, str) else set(next(iter(p.values())))
    return out


def params_report(trace_file: Path, dvc_yaml: Path = ROOT / "dvc.yaml") -> tuple[list[str], list[str]]:
    """(missing, unused) params per stage, from the keys each stage process recorded while it ran
    (LLM_CORE_TRACE_PARAMS). A key is covered by its own line or by a line naming a section above it."""
    import json

    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    records = [json.loads(line) for line in trace_file.read_text().splitlines()]
    missing, unused = [], []
    for name, spec in stages.items():
        cmd = " ".join(spec["cmd"].split())
        script = re.search(r"python -m ([\w.]+)", cmd).group(1).replace(".", "/") + ".py"
        read: set[str] = set()
        for rec in records:
            argv = rec["argv"]
            # a stage's process: its script, with the arguments dvc.yaml gives it (resolved ${...} aside)
            if argv and argv[0].endswith(script) and _args_match(argv[1:], cmd):
                read |= set(rec["keys"])
        declared = declared_params(spec)
        for key in sorted(read):
            if not any(key == d or key.startswith(d + ".") for d in declared):
                missing.append(f"stage {name}: add `- {key}` to its params")
        for d in sorted(declared):
            if not any(k == d or k.startswith(d + ".") for k in read):
                unused.append(f"stage {name}: params `{d}` declared, not read in this run")
    return missing, unused


def _args_match(args: list[str], cmd: str) -> bool:
    words = cmd.split()
    start = next(i for i, w in enumerate(words) if w == "-m") + 2
    want = words[start:]
    return len(want) == len(args) and all(w == a or "${" in w for w, a in zip(want, args))
