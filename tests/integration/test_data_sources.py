"""Real sources offline: a URL served by an HTTP server on 127.0.0.1, and `hf` on local dataset folders."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_core.config import DataConfig, SourceConfig
from llm_core.data import sources

BODY = "".join(json.dumps({"text": f"document number {i} " + "word " * (i % 50)}) + "\n" for i in range(400)).encode()


class Server:
    """Serves BODY with Range support; the first `drops` responses stop after `cut` bytes."""

    def __init__(self, drops: int = 0, cut: int = 1000):
        self.drops, self.cut, self.requests = drops, cut, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(BODY):
                    self.send_response(416)
                    self.end_headers()
                    return
                body = BODY[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drops:
                    server.drops -= 1
                    self.wfile.write(body[:server.cut])  # then the connection closes early
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/corpus.jsonl"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    made = []

    def make(**kw):
        made.append(Server(**kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_interrupted_download_resumes_with_range(serve, tmp_path):
    server = serve(drops=2, cut=3000)
    target = sources.fetch_url(server.url, tmp_path / "c.jsonl", hashlib.sha256(BODY).hexdigest())
    assert target.read_bytes() == BODY
    assert server.requests == [None, "bytes=3000-", "bytes=6000-"]
    assert not (tmp_path / "c.jsonl.part").exists()


def test_partial_file_from_a_killed_run_resumes(serve, tmp_path):
    server = serve(drops=1, cut=5000)
    with pytest.raises(ValueError, match="interrupted 1 times.*rerun to resume"):
        sources.fetch_url(server.url, tmp_path / "c.jsonl", retries=0)
    assert (tmp_path / "c.jsonl.part").stat().st_size == 5000
    sources.fetch_url(server.url, tmp_path / "c.jsonl")
    assert (tmp_path / "c.jsonl").read_bytes() == BODY and server.requests[-1] == "bytes=5000-"


def test_checksum_mismatch_removes_the_download(serve, tmp_path):
    server = serve()
    with pytest.raises(ValueError, match="does not match data.sha256"):
        sources.fetch_url(server.url, tmp_path / "c.jsonl", "0" * 64)
    assert not (tmp_path / "c.jsonl").exists() and not (tmp_path / "c.jsonl.part").exists()


def test_url_source_writes_the_dataset(serve, tmp_path, monkeypatch):
    server = serve(drops=1)
    monkeypatch.chdir(tmp_path)
    data = DataConfig(source="url", url=server.url, sha256=hashlib.sha256(BODY).hexdigest(), max_docs=300)
    info = sources.write_dataset("pretrain", data, tmp_path / "raw")
    assert info["docs_train"] + info["docs_val"] == 300
    assert next(sources.iter_texts(tmp_path / "raw", "train")).startswith("document number 0")


def test_a_url_without_sha256_records_the_one_it_read_and_says_so(serve, tmp_path, monkeypatch, capsys):
    server = serve()
    monkeypatch.chdir(tmp_path)
    info = sources.write_dataset("pretrain", DataConfig(source="url", url=server.url), tmp_path / "raw")
    digest = hashlib.sha256(BODY).hexdigest()
    # in info.json, an output DVC hashes: dvc.lock pins the bytes read, and other bytes later show up as a change
    assert info["sha256"] == digest and info["url"] == server.url
    assert json.loads((tmp_path / "raw/info.json").read_text())["sha256"] == digest
    said = capsys.readouterr().out
    assert said.count(f"data.url has no sha256; read {digest}") == 1 and f"data.sha256: {digest}" in said


def hf_data(kind: str, path, **kw) -> DataConfig:
    src = SourceConfig(source="hf", hf_path=str(path), **kw)
    if kind == "pretrain":
        return DataConfig(source="hf", hf_path=str(path), val_fraction=0.1, **kw)
    return DataConfig(**{kind: src})


def test_hf_source_streams_a_local_folder_of_parquet_and_jsonl(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "tinystories"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": [f"story {i}" for i in range(60)]}), folder / "data" / "train-0.parquet")
    info = sources.write_dataset("pretrain", hf_data("pretrain", folder, max_docs=50), tmp_path / "raw")
    assert info["docs_train"] + info["docs_val"] == 50
    chats = tmp_path / "smoltalk"
    chats.mkdir()
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(20)]
    (chats / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sources.write_dataset("sft", hf_data("sft", chats), tmp_path / "sft")
    got = list(sources.read_dataset(tmp_path / "sft", "train", "x")) + list(sources.read_dataset(tmp_path / "sft",
                                                                                                  "val", "x"))
    assert sorted(c["messages"][0]["content"] for c in got) == sorted(f"q{i}" for i in range(20))


def test_hf_source_reads_save_to_disk_and_hub_style_hellaswag(tmp_path):
    datasets = pytest.importorskip("datasets")
    items = {"ind": [1, 2], "activity_label": ["Cooking", "Sports"], "ctx_a": ["A man", "A girl"],
             "ctx_b": ["cuts", "runs"], "ctx": ["A man cuts", "A girl runs"],
             "endings": [["a", "b", "c", "d"], ["e", "f", "g", "h"]], "label": ["2", "0"],  # strings on the hub
             "split": ["val", "val"], "split_type": ["indomain", "zeroshot"], "source_id": ["x", "y"]}
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(items)}).save_to_disk(tmp_path / "hs")
    data = hf_data("hellaswag", tmp_path / "hs", hf_split="validation")
    sources.write_dataset("hellaswag", data, tmp_path / "out")
    got = list(sources.read_dataset(tmp_path / "out", "val", "x"))
    assert [g["label"] for g in got] == [2, 0] and got[1]["ctx_b"] == "runs" and got[0]["endings"][2] == "c"
    with pytest.raises(ValueError, match="no split 'test'.*data.hellaswag.hf_split"):
        sources.write_dataset("hellaswag", hf_data("hellaswag", tmp_path / "hs", hf_split="test"), tmp_path / "o2")
