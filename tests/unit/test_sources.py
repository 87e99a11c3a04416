import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_core.config import DataConfig, SourceConfig
from llm_core.data import sources
from llm_core.data.sources import parquet
from llm_core.data.sources import text as decoding


def local(paths, **kw):
    return DataConfig(source="local", paths=[str(p) for p in paths], **kw)


def test_synthetic_pretrain_writes_shards_and_floor(tmp_path):
    info = sources.write_dataset("pretrain", DataConfig(num_docs=200), tmp_path / "raw")
    assert info["docs_train"] + info["docs_val"] == 200 and info["docs_val"] > 0
    assert 0 < info["entropy_floor_bpb"] < 8
    texts = list(sources.iter_texts(tmp_path / "raw", "train"))
    assert len(texts) == info["docs_train"]


def test_split_is_deterministic(tmp_path):
    a = sources.write_dataset("pretrain", DataConfig(num_docs=100), tmp_path / "a")
    b = sources.write_dataset("pretrain", DataConfig(num_docs=100), tmp_path / "b")
    assert a == b
    assert list(sources.iter_texts(tmp_path / "a", "val")) == list(sources.iter_texts(tmp_path / "b", "val"))


def test_sft_and_hellaswag_synthetic(tmp_path):
    data = DataConfig(sft=SourceConfig(num_docs=50), hellaswag=SourceConfig(num_docs=20))
    sources.write_dataset("sft", data, tmp_path / "sft")
    sources.write_dataset("hellaswag", data, tmp_path / "hs")
    chats = list(sources.read_dataset(tmp_path / "sft", "train", "x"))
    assert chats and all(m["role"] in ("user", "assistant", "system") for c in chats for m in c["messages"])
    items = list(sources.read_dataset(tmp_path / "hs", "val", "x"))
    assert len(items) == 20 and all(len(i["endings"]) == 4 for i in items)


def test_local_txt_jsonl_parquet(tmp_path):
    (tmp_path / "a.txt").write_text("First paragraph.\n\nSecond paragraph.\n")
    (tmp_path / "b.jsonl").write_text('{"text": "json doc"}\n{"text": ""}\n')
    pq.write_table(pa.table({"text": ["parquet doc"]}), tmp_path / "c.parquet")
    info = sources.write_dataset("pretrain", local([tmp_path / "*"], val_fraction=0.01), tmp_path / "out")
    texts = list(sources.iter_texts(tmp_path / "out", "train")) + list(sources.iter_texts(tmp_path / "out", "val"))
    assert sorted(texts) == sorted(["First paragraph.\n\nSecond paragraph.", "json doc", "parquet doc"])
    assert info["skipped_empty"] == 1


def test_non_utf8_names_file_offset_and_key(tmp_path):
    f = tmp_path / "book.txt"
    f.write_bytes("caf\u00e9 ok".encode("cp1252"))
    with pytest.raises(ValueError, match=r"book\.txt: byte 3 \(0xe9\) is not valid utf-8; set data\.encoding"):
        sources.write_dataset("pretrain", local([f]), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    sources.write_dataset("pretrain", local([f], encoding="cp1252", val_fraction=0.01), tmp_path / "out")
    assert list(sources.iter_texts(tmp_path / "out", "train")) == ["caf\u00e9 ok"]


def test_empty_corpus_keeps_previous_output(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("some text " * 20)
    sources.write_dataset("pretrain", local([good], val_fraction=0.01), tmp_path / "out")
    before = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="corpus is empty"):
        sources.write_dataset("pretrain", local([empty]), tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == before


def test_missing_path_and_missing_column(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no file matches .*data\.paths"):
        sources.write_dataset("pretrain", local([tmp_path / "nope*.txt"]), tmp_path / "out")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match=r"no column 'text'.*data\.column"):
        sources.write_dataset("pretrain", local([tmp_path / "c.parquet"]), tmp_path / "out")


def test_malformed_jsonl_line_is_counted(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a good line"}\n{not json\n{"text": "another"}\n')
    info = sources.write_dataset("pretrain", local([f], val_fraction=0.01), tmp_path / "out")
    assert info["skipped_malformed"] == 1 and info["docs_train"] + info["docs_val"] == 2


def test_url_source_offline_message(tmp_path):
    data = DataConfig(source="url", url="http://127.0.0.1:9/none.txt")
    with pytest.raises(ValueError, match="needs a network; use data.source=synthetic or local"):
        sources.write_dataset("pretrain", data, tmp_path / "out")


def test_limits(tmp_path):
    info = sources.write_dataset("pretrain", DataConfig(num_docs=100, max_docs=10), tmp_path / "out")
    assert info["docs_train"] + info["docs_val"] == 10
    assert json.loads((tmp_path / "out" / "info.json").read_text())["bytes"] == info["bytes"]


def test_official_hellaswag_jsonl_keeps_its_schema(tmp_path):
    item = {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
            "ctx_b": "he", "ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain",
            "label": 3, "endings": ["is using wrap.", "is ripping level tiles off.", "is holding a rubik's cube.",
                                    "starts pulling up roofing on a roof."], "source_id": "activitynet~v_-JhWjGDPHMY"}
    f = tmp_path / "hellaswag_val.jsonl"
    f.write_text(json.dumps(item) + "\n" + json.dumps({"ctx": "no endings"}) + "\n")
    info = sources.write_dataset("hellaswag", DataConfig(hellaswag=SourceConfig(source="local", paths=[str(f)])),
                                 tmp_path / "out")
    assert info["docs_val"] == 1 and info["skipped_malformed"] == 1
    assert list(sources.read_dataset(tmp_path / "out", "val", "x")) == [item]


def test_shards_are_bounded_in_rows_and_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet, "ROWS_PER_GROUP", 8)
    data = DataConfig(num_docs=300, val_fraction=0.01)
    sources.write_dataset("pretrain", data, tmp_path / "rows", rows_per_shard=50)
    parts = sorted((tmp_path / "rows" / "train").glob("*.parquet"))
    assert len(parts) > 5 and all(pq.ParquetFile(p).metadata.num_rows <= 50 for p in parts)
    assert pq.ParquetFile(parts[0]).num_row_groups == 7  # 50 rows in groups of 8
    sources.write_dataset("pretrain", data, tmp_path / "bytes", bytes_per_shard=5000)
    for p in sorted((tmp_path / "bytes" / "train").glob("*.parquet")):
        texts = pq.read_table(p).column("text").to_pylist()
        assert sum(len(t.encode()) for t in texts[:-1]) < 5000  # closes at the row that crosses the bound
    assert list(sources.iter_texts(tmp_path / "rows", "train")) == list(sources.iter_texts(tmp_path / "bytes",
                                                                                           "train"))


def test_streamed_decoding_reports_the_offset_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(decoding, "READ_BLOCK", 7)
    f = tmp_path / "book.txt"
    f.write_bytes("é".encode() * 10 + b"ok \xff rest")  # a character cut by each block boundary, then a bad byte
    with pytest.raises(ValueError, match=r"byte 23 \(0xff\) is not valid utf-8; set data\.encoding"):
        sources.write_dataset("pretrain", local([f]), tmp_path / "out")
    text = "para one\nstill one\n\n\n para two \r\n\r\nthree"
    f.write_bytes(text.encode())
    assert list(sources.chunk_lines(decoding.lines(f, "utf-8", "pretrain"), max_chars=20)) == [
        "para one\nstill one", "para two\n\nthree"]


def test_gzip_jsonl_and_inputs_recorded(tmp_path):
    import gzip

    f = tmp_path / "d.jsonl.gz"
    f.write_bytes(gzip.compress(b'{"text": "zipped doc"}\n{"text": "another"}\n'))
    info = sources.write_dataset("pretrain", local([f], val_fraction=0.01), tmp_path / "out")
    assert info["docs_train"] == 2
    # content, not mtime: a clone or a copy of the same files records the same, so dvc.lock does not change
    assert info["inputs"] == [{"path": str(f), "bytes": f.stat().st_size,
                               "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}]


# --------------------------------------------------------------------------------------------------------------------
# Pinned sources: what a source read is recorded in info.json (an output DVC hashes), so dvc.lock pins it


class FakeHub:
    """The two calls the hf source makes, answered offline: the hub resolves a revision to a commit sha, and the
    dataset streams at a revision."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, monkeypatch):
        import datasets
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RevisionNotFoundError

        self.asked: dict = {}

        def dataset_info(api, repo_id, revision=None, **kw):
            self.asked["info"] = (repo_id, revision)
            if revision == "no-such-tag":
                err = RevisionNotFoundError.__new__(RevisionNotFoundError)
                Exception.__init__(err, "404")
                raise err
            return type("Info", (), {"sha": self.COMMIT})()

        def load_dataset(path, name=None, split=None, streaming=False, revision=None, **kw):
            self.asked["load"] = (path, name, split, streaming, revision)
            return [{"text": f"story {i}"} for i in range(30)]

        monkeypatch.setattr(HfApi, "dataset_info", dataset_info)
        monkeypatch.setattr(datasets, "load_dataset", load_dataset)


def test_hf_source_streams_the_commit_its_revision_resolves_to_and_records_it(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    hub = FakeHub(monkeypatch)
    data = DataConfig(source="hf", hf_path="someone/stories", hf_revision="v1.0", val_fraction=0.1)
    info = sources.write_dataset("pretrain", data, tmp_path / "raw")
    assert hub.asked["info"] == ("someone/stories", "v1.0")
    # the rows are read at the resolved commit, not at the tag (which can move), and that commit is recorded
    assert hub.asked["load"] == ("someone/stories", None, "train", True, FakeHub.COMMIT)
    assert info["revision"] == FakeHub.COMMIT
    assert json.loads((tmp_path / "raw/info.json").read_text())["revision"] == FakeHub.COMMIT
    sources.write_dataset("pretrain", DataConfig(source="hf", hf_path="someone/stories"), tmp_path / "newest")
    assert hub.asked["info"] == ("someone/stories", None)  # '' = the newest commit, resolved and recorded the same
    with pytest.raises(ValueError, match=r"has no revision 'no-such-tag'; set data\.hf_revision to one of its"):
        sources.write_dataset("pretrain", DataConfig(source="hf", hf_path="someone/stories",
                                                     hf_revision="no-such-tag"), tmp_path / "bad")
