"""Every name the README and docs/*.md give a reader exists: repository paths (outputs the pipeline makes are checked
against dvc.yaml's outs, metrics and plots, since they exist only after a run), `python -m` modules, dotted
`llm_core.*` names, console commands, `make` targets, test ids, links with their anchors (GitHub's slugs), and the
params of every `dvc exp run -S ...` (the config reader takes them).
A rename in the code then fails here instead of in front of a reader."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shlex
import subprocess
import tomllib
from functools import cache
from pathlib import Path

import yaml

from llm_core.config import ParamsError, load_params
from tests.helpers import ROOT

# first path components that name files of the repository itself
SOURCE_DIRS = ("llm_core", "stages", "tests", "bench", "tools", "docs", ".dvc", ".ci", "hf")
# (a missing path that git ignores is one the user makes: a download under hf/, DVC's .dvc/config.local)
SOURCE_FILES = ("params.yaml", "dvc.yaml", "dvc.lock", "Makefile", "pyproject.toml", "README.md")
# first path components of what the pipeline writes: real only after a run, so checked against dvc.yaml
OUTPUT_DIRS = ("models", "data", "metrics", "dvclive")
# working folders the stages make beside their declared outputs (not outputs: DVC must not hash or delete them)
SCRATCH = ("data/raw/.downloads", "data/tokens.resume.tmp")
# folders the docs name on purpose: a typo and the error it gets, a folder the user picks for an import
EXAMPLES = ("models/stf", "models/imported")

PATH_RE = re.compile(r"(?<![\w./~-])((?:%s)/[\w.{},<>*/-]*[\w}>*/]|(?:%s)(?![\w.-]))" % (
    "|".join(re.escape(d) for d in SOURCE_DIRS + OUTPUT_DIRS), "|".join(re.escape(f) for f in SOURCE_FILES)))
TEST_ID_RE = re.compile(r"(tests/[\w/]+\.py)::(\w+)")
MODULE_RE = re.compile(r"\bpython3? -m ([\w.]+)")
DOTTED_RE = re.compile(r"(?<![\w./])(llm_core(?:\.\w+)+)")
LINK_RE = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
COMMAND_SEP = r"(?:^|[`;(|]|&&|\$ )\s*"
MAKE_RE = re.compile(COMMAND_SEP + r"make((?: [A-Z_]+=\S+)*) ([a-z][\w-]*)", re.M)
CONSOLE_RE = re.compile(COMMAND_SEP + r"(?:\w+=\S+ )*(llm-[a-z]+)\b", re.M)


@cache
def declared_outputs() -> tuple[str, ...]:
    """Every path dvc.yaml declares as a stage's out or metrics file, a top-level metric, or a plot's curve file."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    paths = []
    for stage in spec["stages"].values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                paths.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    paths += spec.get("metrics", [])
    for plot in spec.get("plots", []):
        # a stage's dvclive folder holds every curve it logs, not only the ones a chart draws
        paths += ["/".join(curve.split("/")[:2]) for curve in next(iter(plot.values()))["y"]]
    return tuple(paths)


@cache
def console_scripts() -> frozenset[str]:
    return frozenset(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


@cache
def make_targets() -> frozenset[str]:
    return frozenset(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


def expand_braces(path: str) -> list[str]:
    """`metrics/runtime/{pretrain,sft}.json` -> both paths."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",") for p in expand_braces(path[:m.start()] + alt + path[m.end():])]


def concrete_prefix(path: str) -> str:
    """The part of a path before its first placeholder (`<stage>`, `step_*`, `step_XXXXXXX`, `${eval.model}`)."""
    parts = []
    for part in path.rstrip("/").split("/"):
        if re.search(r"[<>*$]|XXX", part):
            break
        parts.append(part)
    return "/".join(parts)


def under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/") or folder.startswith(path + "/")


def path_problem(path: str) -> str | None:
    for one in expand_braces(path):
        concrete = concrete_prefix(one)
        top = concrete.split("/")[0]
        if top in OUTPUT_DIRS:
            # a placeholder cut the path short: the rest must lie under a declared output
            if concrete and not any(under(concrete, out) for out in (*declared_outputs(), *SCRATCH, *EXAMPLES)):
                return f"{one}: not under any output, metric or plot file of dvc.yaml"
        elif concrete and not (ROOT / concrete).exists() and not git_ignored(concrete):
            return f"{one}: no such file in the repository"
    return None


@cache
def git_ignored(path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0


@cache
def top_level_names(module_file: Path) -> frozenset[str]:
    names = set()
    for node in ast.parse(module_file.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return frozenset(names)


def module_file(dotted: str) -> Path | None:
    base = ROOT.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def dotted_problem(name: str) -> str | None:
    """`llm_core.a.b.name`: the longest module prefix must exist, and the next part be defined in it."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        found = module_file(".".join(parts[:i]))
        if found:
            rest = parts[i:]
            if rest and rest[0] not in top_level_names(found) and not module_file(".".join(parts[:i + 1])):
                return f"{name}: {'.'.join(parts[:i])} defines no {rest[0]}"
            return None
    return f"{name}: no such module"


def module_problem(name: str) -> str | None:
    """`python -m name` must run: a module file, or a package with __main__.py."""
    if name.split(".")[0] in ("llm_core", "stages", "bench", "tools", "tests"):
        base = ROOT.joinpath(*name.split("."))
        if base.with_suffix(".py").is_file() or (base / "__main__.py").is_file():
            return None
        return f"python -m {name}: no module {name} to run"
    return None if importlib.util.find_spec(name.split(".")[0]) else f"python -m {name}: {name} is not installed"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def prose(text: str) -> str:
    """The text without fenced code blocks (a `# comment` in a bash block is no heading)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", prose(text), re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def link_problem(target: str, doc: Path, text: str) -> str | None:
    if re.match(r"[a-z]+:", target):  # http(s), mailto
        return None
    file, _, anchor = target.partition("#")
    dest = (doc.parent / file).resolve() if file else doc
    if not dest.exists():
        return f"({target}): no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
    if anchor and anchor not in anchors(dest.read_text() if file else text):
        return f"({target}): {dest.name} has no heading with the anchor #{anchor}"
    return None


def exp_commands(text: str) -> list[str]:
    """The arguments of every `dvc exp run` in `text`, backslash-continued lines joined; inline code ends at its
    backtick, a shell line at its comment."""
    commands = []
    for m in re.finditer(r"dvc exp run\b", text):
        parts = []
        for line in text[m.end():].split("\n"):
            parts.append(line.rstrip().removesuffix("\\"))
            if not line.rstrip().endswith("\\"):
                break
        commands.append(" ".join(parts).split("`")[0].split(" #")[0])
    return commands


def exp_problem(args: str) -> str | None:
    """Why the config reader refuses the `-S key=value` params of one `dvc exp run` (DVC parses each value as YAML),
    or None; a value with a <placeholder> is not checked."""
    tokens = shlex.split(args)
    sets = [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in ("-S", "--set-param")]
    if any("<" in s for s in sets):
        return None
    try:
        load_params(ROOT / "params.yaml", {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in sets)})
    except ParamsError as e:
        return f"dvc exp run{args}: {e}"
    return None


def dangling(text: str, doc: Path) -> list[str]:
    """Every name in `text` (a Markdown file at `doc`) that does not exist, with why."""
    problems = []
    for m in PATH_RE.finditer(text):
        problems.append(path_problem(m.group(1)))
    for file, test in TEST_ID_RE.findall(text):
        if (ROOT / file).is_file() and not re.search(rf"^\s*(?:async )?def {test}\(", (ROOT / file).read_text(), re.M):
            problems.append(f"{file}::{test}: no such test")
    problems += [module_problem(name) for name in MODULE_RE.findall(text)]
    problems += [dotted_problem(name) for name in DOTTED_RE.findall(text)]
    problems += [None if cmd in console_scripts() else f"{cmd}: no such console command in pyproject.toml"
                 for cmd in CONSOLE_RE.findall(text)]
    problems += [None if target in make_targets() else f"make {target}: no such target in the Makefile"
                 for _, target in MAKE_RE.findall(text)]
    problems += [link_problem(target, doc, text) for target in LINK_RE.findall(prose(text))]
    problems += [exp_problem(args) for args in exp_commands(text)]
    return list(dict.fromkeys(p for p in problems if p))


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_name_in_the_readme_and_docs_exists():
    found = {p.relative_to(ROOT).as_posix(): dangling(p.read_text(), p) for p in pages()}
    found = {page: problems for page, problems in found.items() if problems}
    assert not found, json.dumps(found, indent=1)


def test_a_dangling_name_of_each_kind_is_caught():
    text = """See `llm_core/model.py` and [the model](docs/model.md#no-such-heading), [gone](docs/nothing.md).
```bash
python -m llm_core.nothing
make nothing
llm-nothing --help
```
`llm_core.attention.attention(q, k, v)` and `llm_core.training.loop.no_such_name`; outputs `models/nowhere/x.json`,
`metrics/runtime/{pretrain,nothing}.json`; `tests/unit/test_graph.py::test_no_such_test`;
`dvc exp run -S pretrain.stepz=5`, and
```bash
dvc exp run -S model.dropout=0.2 \\
            -S pretrain.lr=-1   # a comment
```
"""
    problems = dangling(text, ROOT / "README.md")
    names = ("llm_core/model.py", "#no-such-heading", "docs/nothing.md", "python -m llm_core.nothing",
             "defines no nothing", "make nothing", "llm-nothing", "llm_core.attention.attention",
             "defines no no_such_name", "models/nowhere/x.json", "metrics/runtime/nothing.json", "test_no_such_test",
             "unknown key pretrain.stepz", "pretrain.lr must be > 0")
    for name in names:
        assert any(name in p for p in problems), (name, problems)
    assert all(any(name in p for name in names) for p in problems), problems


def test_real_names_of_each_kind_pass():
    text = """`llm_core/model/transformer.py`, `llm_core.training.loop.forward_loss`, `python -m stages.pretrain`,
`python -m llm_core.export`, `make repro`, `make chat ARGS="--model models/pretrain"`, `llm-chat`,
`models/<stage>/checkpoints/step_XXXXXXX/`, `metrics/runtime/{pretrain,sft,sample}.json`, `data/raw/<kind>/info.json`,
`dvclive/pretrain/plots/metrics/val/ppl.tsv`, [evaluation](docs/evaluation.md#running-it), [top](#a-heading-with-code),
`tests/unit/test_graph.py`, ../shared/data, /shared/llm-core/dvc-storage,
`dvc exp run -S model.dropout=0.2 -S 'data.paths=[books/]'`, `dvc exp run -S data.hf_revision=<commit sha>`.

## A heading with `code`
```bash
# Not a heading
make exps          # make sure
```
"""
    assert dangling(text, ROOT / "README.md") == []


def test_github_slugs():
    assert slug("Model family and Hugging Face export") == "model-family-and-hugging-face-export"
    assert slug("Dry run: what a run would cost, before it runs") == "dry-run-what-a-run-would-cost-before-it-runs"
    assert slug("`llm-chat`: the terminal") == "llm-chat-the-terminal"
    assert slug("On a GPU: one graph, one sync per step, bf16 where it pays") == \
        "on-a-gpu-one-graph-one-sync-per-step-bf16-where-it-pays"
    assert anchors("# A\n## A\n```\n# B\n```\n") == {"a", "a-1"}


def test_the_front_page_figures_are_the_committed_runs():
    """Each figure of the README's "What the default run gives" table is its metrics file's value, rounded as shown:
    a new committed run that changes a figure fails here until the table is updated."""
    table = (ROOT / "README.md").read_text().split("### What the default run gives", 1)[1].split("\n\n")[2]
    rows = re.findall(r"^\| [^|]+ \| ([\d,.]+) \| `(metrics/[\w/]+\.json)` `(\w+)` \|$", table, re.M)
    assert len(rows) >= 7, table
    for shown, file, key in rows:
        value = json.loads((ROOT / file).read_text())[key]
        decimals = len(shown.split(".")[1]) if "." in shown else 0
        assert f"{value:,.{decimals}f}" == shown, f"README shows {shown} for {file} {key}, the file has {value}"
