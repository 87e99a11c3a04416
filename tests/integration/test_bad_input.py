"""Every row of the bad-input table (docs/bad-input.md), run the way a user meets it: one short block naming the
stage, the problem and the fix; no traceback; and nothing lost.

Most mistakes happen inside `dvc repro` / `dvc exp run`: those rows run through the real `dvc` on a copy of a tiny
pipeline that has run (tests/integration/conftest.py `dvc_run`), and every file the pipeline wrote must be left
byte for byte and mode for mode as it was, so that `dvc status` reports nothing deleted (DVC removes a stage's
outputs before running it unless they are `persist: true`; the cp1252 row asks `dvc status` itself). Two mistakes
never reach a stage under DVC, which first reruns or asks for the missing upstream output itself: they run through
the stage command (as on a cluster, where the stage is started by srun) on a project made by the stage scripts."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.dvc_run import copy_run, run_in, snapshot
from tests.helpers import PRETRAIN, ROOT, SAMPLE, project_env, set_params, stage


# --------------------------------------------------------------------------------------------------------------------
# Inside dvc repro / dvc exp run: each set-up changes a copy of the run and returns the dvc command and the expected
# fragments of its output


def unknown_key(repo):
    set_params(repo, {"pretrain": {"lrr": 1}})
    return ["dvc", "repro"], ["pretrain: error: params.yaml: unknown key pretrain.lrr (allowed in pretrain:"]


def bad_value(repo):
    set_params(repo, {"pretrain": {"lr": -1}})
    return ["dvc", "repro"], ["pretrain: error: params.yaml: pretrain.lr must be > 0 (got -1.0)"]


def empty_corpus(repo):
    (repo / "empty.txt").write_text("")
    set_params(repo, {"data": {"source": "local", "paths": ["empty.txt"]}})
    return ["dvc", "repro"], ["download: error: the pretrain corpus is empty (source=local)"]


def not_utf8(repo):
    # the experiment of the report that started this: a cp1252 book read as utf-8
    (repo / "book.txt").write_bytes("Caf\xe9 au lait.\n".encode("cp1252") * 50)
    return (["dvc", "exp", "run", "-S", "data.source=local", "-S", "data.paths=[book.txt]"],
            ["book.txt: byte 3 (0xe9) is not valid utf-8", "download: fix: set data.encoding to the file's encoding"])


def parquet_without_column(repo):
    pq.write_table(pa.table({"body": ["some text"] * 20}), repo / "corpus.parquet")
    set_params(repo, {"data": {"source": "local", "paths": ["corpus.parquet"]}})
    return ["dvc", "repro"], ["parquet file has no column 'text' (columns: ['body'])", "data.column"]


def wrong_sha256(repo):
    body = b"Once upon a time there was a test.\n" * 50
    served = repo / "www"
    served.mkdir()
    (served / "corpus.txt").write_bytes(body)
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    set_params(repo, {"data": {"source": "url", "url": f"http://127.0.0.1:{server.server_address[1]}/corpus.txt",
                               "sha256": "0" * 64}})
    return ["dvc", "repro"], [f"sha256 {hashlib.sha256(body).hexdigest()} does not match data.sha256 {'0' * 64}"]


def offline_url(repo):
    set_params(repo, {"data": {"source": "url", "url": "http://127.0.0.1:9/corpus.txt"}})
    return ["dvc", "repro"], ["data.source=url needs a network", "use data.source=synthetic or local"]


def truncated_shard(repo):
    # `dvc repro` would rebuild the changed shards first; asking for one stage reaches the check
    shard = repo / "data/tokens/pretrain/train_00000.npy"
    shard.write_bytes(shard.read_bytes()[:1000])
    return ["dvc", "repro", "-s", "pretrain"], [
        "pretrain: error:", "train_00000.npy is truncated or corrupt",
        "pretrain: fix: run `dvc repro tokenize tokenize_sft` to rebuild it"]


def other_tokenizer(repo):
    set_params(repo, {"tokenizer": {"vocab_size": 380}})
    run_in(repo, "dvc", "repro", "-s", "train_tokenizer")  # a new tokenizer; the shards are the old one's
    return ["dvc", "repro", "-s", "pretrain"], ["was made by another tokenizer",
                                                "pretrain: fix: run `dvc repro tokenize tokenize_sft` to re-encode"]


def corrupt_model(repo):
    (repo / "models/sft/model.safetensors").write_bytes(b"not a safetensors file")
    return ["dvc", "repro", "-s", "sample"], ["sample: error: models/sft/model.safetensors cannot be read as weights",
                                              "sample: fix: retrain the model"]


def bad_prompts_line(repo):
    (repo / "prompts.jsonl").write_text('{"prompt": "fine"}\n{"text": "no prompt key"}\n')
    set_params(repo, {"sample": {"prompts_file": "prompts.jsonl"}})
    return ["dvc", "repro"], ["sample: error: prompts.jsonl:2 has neither a `prompt` string nor a `messages` list",
                              "sample: fix: give the line one of them"]


def harness_not_installed(repo):
    (repo / "lm_eval.py").write_text('raise ImportError("No module named lm_eval")\n')  # shadows an installed one
    set_params(repo, {"eval": {"harness_tasks": ["hellaswag"]}})
    return ["dvc", "repro"], ["eval_harness: error: eval.harness_tasks names tasks, but lm-evaluation-harness cannot "
                              "be imported", "eval_harness: fix: pip install 'lm-eval[hf]>=0.4.13,<0.5'"]


def _open_model(repo, config: dict) -> None:
    """A Hugging Face folder holding only config.json (the import checks it before reading anything else)."""
    (repo / "hf/x").mkdir(parents=True)
    (repo / "hf/x/config.json").write_text(json.dumps(config))
    set_params(repo, {"model": {"init": "hf", "init_path": "hf/x"}, "tokenizer": {"source": "hf"}})


def unsupported_family(repo):
    _open_model(repo, {"model_type": "gemma", "hidden_size": 32, "num_attention_heads": 2, "head_dim": 16})
    return ["dvc", "repro"], ["import_model: error: hf/x/config.json: model_type 'gemma' is not supported: llm_core "
                              "imports the families llama, mistral, qwen2 (gemma has RMSNorm scaled by (1 + weight)"]


def contradicting_key(repo):
    _open_model(repo, {"model_type": "llama", "num_hidden_layers": 3, "hidden_size": 32, "num_attention_heads": 2,
                       "intermediate_size": 64, "vocab_size": 300})
    return ["dvc", "repro"], ["import_model: error: params.yaml: model.n_layers is 2 but hf/x/config.json has 3 "
                              "(num_hidden_layers)", "import_model: fix: with model.init: hf the architecture comes "
                              "from the folder: leave model.n_layers blank"]


IN_DVC = {
    "an unknown params key": unknown_key,
    "a params value out of range": bad_value,
    "an empty corpus": empty_corpus,
    "non-UTF-8 local text": not_utf8,
    "a parquet file without the text column": parquet_without_column,
    "a download whose sha256 differs from `data.sha256`": wrong_sha256,
    "a url source without a network": offline_url,
    "a truncated token shard": truncated_shard,
    "token shards made by another tokenizer": other_tokenizer,
    "a corrupt model file": corrupt_model,
    "a bad line in `sample.prompts_file`": bad_prompts_line,
    "`eval.harness_tasks` without lm-evaluation-harness installed": harness_not_installed,
    "an open model of a family the Transformer cannot compute": unsupported_family,
    "a `model.*` key that contradicts the imported folder": contradicting_key,
}

# --------------------------------------------------------------------------------------------------------------------
# Only when a stage is run by hand (DVC reruns the upstream stage, or stops on the missing dependency itself): the
# stage command on a project made by the stage scripts -> (command, expected fragments, files that must stay)


def missing_upstream(repo):
    shutil.rmtree(repo / "models/tokenizer")
    cmd = ["stages.tokenize", "pretrain", "--raw", "data/raw/pretrain", "--tokenizer", "models/tokenizer",
           "--out", "data/tokens/pretrain"]
    return cmd, ["tokenize: error: no tokenizer at models/tokenizer",
                 "tokenize: fix: run `dvc repro train_tokenizer` first"], ["data/tokens/pretrain/manifest.json"]


def missing_model(repo):
    return SAMPLE, ["sample: error: no model in models/sft",
                    "sample: fix: run `dvc repro sft` (or `make repro`) first"], []


BY_HAND = {
    "a missing upstream output": missing_upstream,
    "a missing model": missing_model,
}


def documented_rows() -> list[tuple[str, str]]:
    """(input, where) of every row of docs/bad-input.md's table (the one headed `| input | where | message |`)."""
    text = (ROOT / "docs/bad-input.md").read_text()
    table = text.split("| input | where | message |\n", 1)[1].split("\n\n", 1)[0]
    return [tuple(re.match(r"\| (.+?) \| (.+?) \|", line).groups()) for line in table.splitlines()[1:]]


def test_every_row_of_the_bad_input_page_is_tested_where_it_happens():
    rows = documented_rows()
    assert sorted(name for name, _ in rows) == sorted([*IN_DVC, *BY_HAND])
    for name, where in rows:
        assert where == ("`dvc repro`" if name in IN_DVC else "by hand"), name


@pytest.mark.slow
@pytest.mark.parametrize("case", list(IN_DVC))
def test_a_mistake_inside_dvc_loses_nothing(dvc_run, tmp_path, case):
    repo = copy_run(dvc_run, tmp_path / "repo")
    cmd, expected = IN_DVC[case](repo)
    before = snapshot(repo)
    proc = run_in(repo, *cmd, ok=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "exited with 2" in out, out[-3000:]
    assert "Traceback" not in out
    for fragment in expected:
        assert fragment in out, f"{fragment!r} not in:\n{out[-3000:]}"
    assert "LLM_CORE_DEBUG=1 shows the traceback" in out
    # every output of every stage is as it was: the same bytes, the same mode
    assert snapshot(repo) == before
    # so none is missing, which `dvc status` reports as "deleted"; asked of dvc itself in the row of the original
    # report (each `dvc status` costs a few seconds)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert all((repo / out["path"]).exists() for st in lock["stages"].values() for out in st.get("outs", []))
    if IN_DVC[case] is not_utf8:
        status = run_in(repo, "dvc", "status").stdout
        assert "deleted" not in status, status


@pytest.mark.parametrize("case", list(BY_HAND))
def test_a_mistake_by_hand_gives_one_readable_block(repo, case):
    cmd, expected, kept = BY_HAND[case](repo)
    before = {k: (repo / k).read_bytes() for k in kept}
    proc = stage(repo, *cmd, ok=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in expected:
        assert fragment in proc.stderr, f"{fragment!r} not in:\n{proc.stderr}"
    assert "LLM_CORE_DEBUG=1 shows the traceback" in proc.stderr
    for k, data in before.items():
        assert (repo / k).read_bytes() == data, f"{k} changed"


def test_debug_shows_the_traceback(repo):
    set_params(repo, {"pretrain": {"lr": -1}})
    proc = subprocess.run([sys.executable, "-m", *PRETRAIN], cwd=repo, env=project_env(LLM_CORE_DEBUG="1"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "pretrain.lr must be > 0" in proc.stderr


def test_a_real_bug_keeps_its_traceback():
    import json

    from llm_core import cli

    # a ValueError raised inside a library (here json) is not a deliberate report of a user mistake
    with pytest.raises(json.JSONDecodeError):
        cli.run("x", lambda: json.loads("{"))
