import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_core import sources
from llm_core.config import DataConfig, SourceConfig


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
