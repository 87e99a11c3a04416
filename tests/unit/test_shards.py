import json

import numpy as np
import pytest

from llm_core import shards, sources
from llm_core.config import DataConfig, SourceConfig


@pytest.fixture(scope="module")
def tokens(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("shards")
    data = DataConfig(num_docs=120, val_fraction=0.1, sft=SourceConfig(num_docs=30))
    sources.write_dataset("pretrain", data, root / "raw")
    sources.write_dataset("sft", data, root / "sft")
    shards.tokenize_all(root / "raw", root / "sft", tokenizer, root / "tokens", shard_tokens=4096, workers=2)
    return root


def test_shards_hold_the_corpus_with_bos_per_document(tokens, tokenizer):
    manifest = shards.load_manifest(tokens / "tokens", tokenizer)
    assert manifest["dtype"] == "uint16"
    train = shards.pretrain_shards(tokens / "tokens", "train", manifest)
    assert len(train) > 1 and all(len(s) == 4096 for s in train[:-1])  # several shards, all full but the last
    stream = np.concatenate(train)
    texts = list(sources.iter_texts(tokens / "raw", "train"))
    assert int((stream == tokenizer.bos_id).sum()) == len(texts)
    expected = np.concatenate([[tokenizer.bos_id] + tokenizer.encode(t) for t in texts])
    assert np.array_equal(stream, expected)


def test_sft_arrays_align(tokens, tokenizer):
    manifest = shards.load_manifest(tokens / "tokens", tokenizer)
    t, m, o = shards.sft_arrays(tokens / "tokens", "train", manifest)
    assert len(t) == len(m) == o[-1] and m.sum() > 0


def test_truncated_shard_is_detected(tokens, tokenizer, tmp_path):
    import shutil

    copy = tmp_path / "tokens"
    shutil.copytree(tokens / "tokens", copy)
    manifest = shards.load_manifest(copy, tokenizer)
    victim = copy / "pretrain" / "train_00000.npy"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated.*dvc repro tokenize"):
        shards.pretrain_shards(copy, "train", manifest)


def test_other_tokenizer_is_detected(tokens, tokenizer, tmp_path):
    manifest = json.loads((tokens / "tokens" / "manifest.json").read_text())
    other = tmp_path / "tokens"
    other.mkdir()
    manifest["tokenizer_fingerprint"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="made by another tokenizer.*dvc repro tokenize"):
        shards.load_manifest(other, tokenizer)


def test_missing_tokens_say_which_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro tokenize"):
        shards.load_manifest(tmp_path)


def test_unigram_baseline_is_the_cross_entropy():
    train = [np.array([0, 0, 1, 1], dtype=np.uint16)]
    val = [np.array([0, 1], dtype=np.uint16)]
    token_bytes = np.array([1, 1, 0])
    # add-one counts: 3, 3, 1 of 7
    assert shards.unigram_bpb(train, val, token_bytes) == pytest.approx(-np.log2(3 / 7))
