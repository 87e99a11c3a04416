"""Every script in bench/ and tools/ runs, as a user runs it, in its smoke mode (tiny inputs, seconds): a rename in the
core breaks a test here instead of the next person who runs a benchmark.

The scripts are found, not listed: a new script without an entry in SMOKE (its smoke command and what its JSON last
line must hold) or in ELSEWHERE (the test that already runs it) fails this suite. The figures of a smoke run mean
nothing; the checks are that the command finishes and reports what it promises.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.helpers import ROOT, project_env


def scripts() -> list[str]:
    """Files of bench/ and tools/ that run as commands (a `__main__` block); helper modules are not scripts."""
    found = [p for folder in ("bench", "tools") for p in sorted((ROOT / folder).glob("*.py"))]
    return [p.relative_to(ROOT).as_posix() for p in found if 'if __name__ == "__main__"' in p.read_text()]


def positive(*keys: str) -> Callable[[dict], None]:
    def check(out: dict) -> None:
        for key in keys:
            value = out
            for part in key.split("."):
                value = value[int(part)] if isinstance(value, list) else value[part]
            assert isinstance(value, (int, float)) and value > 0, (key, value)
    return check


def _tokenize_memory(out: dict) -> None:
    positive("peak_rss_mb_1x", "peak_rss_ratio_2x")(out)
    assert out["tokens_2x"] == 2 * out["tokens_1x"]  # the corpus twice over: twice the tokens


def _flash_compile(out: dict) -> None:
    assert {c["kernel"] for c in out["configs"]} == {"fwd", "dkdv", "dq"}
    assert all(c["fits"] and c["shared_kb"] > 0 for c in out["configs"])


def _seeds(out: dict) -> None:
    assert out["runs"] == 1 and out["per_run"][0]["seed"] == 1
    positive("summary.val_bpb.median", "summary.tokens_per_sec.median")(out)
    assert 0 <= out["summary"]["acc_norm"]["median"] <= 1


# script -> (arguments of its smoke run, check of the JSON on its last line)
SMOKE: dict[str, tuple[list[str], Callable[[dict], None]]] = {
    # the Triton kernel through its CPU interpreter (the existing tiny mode)
    "bench/flash_compile.py": (["--head-dims", "64"], _flash_compile),
    "bench/engine.py": (["--steps", "3", "--repeats", "1"], positive("overhead", "ours_tokens_per_sec")),
    "bench/seeds.py": (["--smoke"], _seeds),
    "bench/serve_load.py": (["--smoke"], positive("ratio_2_vs_1", "ttft_p50_s")),
    "bench/tokenize_memory.py": (["--smoke"], _tokenize_memory),
    "bench/tokenize_speed.py": (["--smoke"], positive("tokens", "ratio_vs_tiktoken", "ratio_vs_tokenizers")),
    "bench/tokenizer_train.py": (["--smoke"], positive("ratio_vs_raw_trainer", "ratio_vs_bytelevel_trainer")),
    "tools/make_favicon.py": (["--check"], lambda out: out["matches"] is True or pytest.fail(str(out))),
}
# script -> the test that runs it (file::function); that file must name the script
GPU_SUITE_TINY = "tests/integration/test_gpu_suite.py::test_tiny_suite_runs_every_part_end_to_end_without_the_dvc_stack"
ELSEWHERE = {
    "bench/gpu_suite.py": GPU_SUITE_TINY,
    # the suite's parts: its tiny run starts each of them as a user would and checks its JSON line
    "bench/attention.py": GPU_SUITE_TINY,
    "bench/decode.py": GPU_SUITE_TINY,
    "bench/optimizer.py": GPU_SUITE_TINY,
    "bench/pretrain_stage.py": GPU_SUITE_TINY,
    "bench/train_step.py": GPU_SUITE_TINY,
    "tools/offline_plots_template.py":
        "tests/integration/test_plots_offline.py::test_template_is_the_generator_output",
}


@pytest.mark.parametrize("script", scripts())
def test_script_runs_in_its_smoke_mode(script: str, tmp_path):
    if script in ELSEWHERE:
        path, _, func = ELSEWHERE[script].partition("::")
        text = (ROOT / path).read_text()
        name = script.split("/")[-1].removesuffix(".py")
        assert f"def {func}(" in text and name in text, f"{ELSEWHERE[script]} does not run {script}"
        return
    assert script in SMOKE, (f"{script} has no smoke test: give it a --smoke mode (tiny inputs, seconds) and add it "
                             "to SMOKE in tests/integration/test_bench_smoke.py")
    args, check = SMOKE[script]
    # in a scratch folder (whatever a script leaves behind lands there), with this checkout's code
    proc = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path,
                          env=project_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    check(json.loads(last))


def test_the_list_of_scripts_is_found():
    found = scripts()
    assert {"bench/decode.py", "bench/gpu_suite.py", "tools/offline_plots_template.py"} <= set(found)
    assert "bench/corpus.py" not in found  # a helper module, not a command
    assert not set(SMOKE) - set(found) and not set(ELSEWHERE) - set(found), "an entry names a script that is gone"
