"""Every row of the README's bad-input table, run through the real stage command: one short block on stderr naming
the stage, the problem and the fix; exit status 2; no traceback; earlier outputs intact."""

from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import PRETRAIN, ROOT, SAMPLE, project_env, set_params, stage

# each case: set-up on a copy of the base project -> (stage command, expected fragments of stderr, files that must
# be left as they were)


def unknown_key(repo):
    set_params(repo, {"pretrain": {"lrr": 1}})
    return PRETRAIN, ["pretrain: error: params.yaml: unknown key pretrain.lrr (allowed in pretrain:"], []


def bad_value(repo):
    set_params(repo, {"pretrain": {"lr": -1}})
    return PRETRAIN, ["pretrain: error: params.yaml: pretrain.lr must be > 0 (got -1.0)"], []


def missing_upstream(repo):
    shutil.rmtree(repo / "models/tokenizer")
    cmd = ["stages.tokenize", "pretrain", "--raw", "data/raw/pretrain", "--tokenizer", "models/tokenizer",
           "--out", "data/tokens/pretrain"]
    return cmd, ["tokenize: error: no tokenizer at models/tokenizer",
                 "tokenize: fix: run `dvc repro train_tokenizer` first"], ["data/tokens/pretrain/manifest.json"]


def empty_corpus(repo):
    (repo / "empty.txt").write_text("")
    set_params(repo, {"data": {"source": "local", "paths": ["empty.txt"]}})
    return (["stages.download", "pretrain", "data/raw/pretrain"],
            ["download: error: the pretrain corpus is empty (source=local)"], ["data/raw/pretrain/info.json"])


def not_utf8(repo):
    (repo / "book.txt").write_bytes("Caf\xe9 au lait.\n".encode("cp1252") * 50)
    set_params(repo, {"data": {"source": "local", "paths": ["book.txt"]}})
    return (["stages.download", "pretrain", "data/raw/pretrain"],
            ["book.txt: byte 3 (0xe9) is not valid utf-8", "download: fix: set data.encoding to the file's encoding"],
            ["data/raw/pretrain/info.json"])


def parquet_without_column(repo):
    pq.write_table(pa.table({"body": ["some text"] * 20}), repo / "corpus.parquet")
    set_params(repo, {"data": {"source": "local", "paths": ["corpus.parquet"]}})
    return (["stages.download", "pretrain", "data/raw/pretrain"],
            ["parquet file has no column 'text' (columns: ['body'])", "data.column"], ["data/raw/pretrain/info.json"])


def wrong_sha256(repo):
    body = b"Once upon a time there was a test.\n" * 50
    served = repo / "www"
    served.mkdir()
    (served / "corpus.txt").write_bytes(body)
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    repo.joinpath(".server").write_text(str(server.server_address[1]))
    set_params(repo, {"data": {"source": "url", "url": f"http://127.0.0.1:{server.server_address[1]}/corpus.txt",
                               "sha256": "0" * 64}})
    return (["stages.download", "pretrain", "data/raw/pretrain"],
            [f"sha256 {hashlib.sha256(body).hexdigest()} does not match data.sha256 {'0' * 64}"],
            ["data/raw/pretrain/info.json"])


def offline_url(repo):
    set_params(repo, {"data": {"source": "url", "url": "http://127.0.0.1:9/corpus.txt"}})
    return (["stages.download", "pretrain", "data/raw/pretrain"],
            ["data.source=url needs a network", "use data.source=synthetic or local"], ["data/raw/pretrain/info.json"])


def truncated_shard(repo):
    shard = repo / "data/tokens/pretrain/train_00000.npy"
    shard.write_bytes(shard.read_bytes()[:1000])
    return PRETRAIN, ["pretrain: error:", "train_00000.npy is truncated or corrupt",
                      "pretrain: fix: run `dvc repro tokenize tokenize_sft` to rebuild it"], []


def other_tokenizer(repo):
    set_params(repo, {"tokenizer": {"vocab_size": 380}})
    stage(repo, "stages.train_tokenizer", "data/raw/pretrain", "models/tokenizer")
    return PRETRAIN, ["was made by another tokenizer",
                      "pretrain: fix: run `dvc repro tokenize tokenize_sft` to re-encode"], []


def missing_model(repo):
    return SAMPLE, ["sample: error: no model in models/sft",
                    "sample: fix: run `dvc repro sft` (or `make repro`) first"], []


def corrupt_model(repo):
    from llm_core.model.io import write_model
    from llm_core.model.transformer import Transformer
    from tests.helpers import tiny_model_config

    write_model(repo / "models/sft", Transformer(tiny_model_config(400)))
    (repo / "models/sft/model.safetensors").write_bytes(b"not a safetensors file")
    return SAMPLE, ["sample: error: models/sft/model.safetensors cannot be read as weights",
                    "sample: fix: retrain the model"], ["models/sft/config.json"]


def bad_prompts_line(repo):
    (repo / "prompts.jsonl").write_text('{"prompt": "fine"}\n{"text": "no prompt key"}\n')
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/s.json").write_text('{"samples": []}\n')  # a previous run's output
    set_params(repo, {"sample": {"prompts_file": "prompts.jsonl"}})
    return SAMPLE, ["sample: error: prompts.jsonl:2 has neither a `prompt` string nor a `messages` list",
                    "sample: fix: give the line one of them"], ["metrics/s.json"]


CASES = {
    "an unknown params key": unknown_key,
    "a params value out of range": bad_value,
    "a missing upstream output": missing_upstream,
    "an empty corpus": empty_corpus,
    "non-UTF-8 local text": not_utf8,
    "a parquet file without the text column": parquet_without_column,
    "a download whose sha256 differs from `data.sha256`": wrong_sha256,
    "a url source without a network": offline_url,
    "a truncated token shard": truncated_shard,
    "token shards made by another tokenizer": other_tokenizer,
    "a missing model": missing_model,
    "a corrupt model file": corrupt_model,
    "a bad line in `sample.prompts_file`": bad_prompts_line,
}


def readme_rows() -> list[str]:
    text = (ROOT / "README.md").read_text()
    table = text.split("## Bad input", 1)[1].split("\n\n")[2]
    return [re.match(r"\| (.+?) \|", line).group(1) for line in table.splitlines()[2:]]


def test_every_row_of_the_readme_table_is_tested():
    assert readme_rows() == list(CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_readable_block(repo, case):
    cmd, expected, kept = CASES[case](repo)
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
