import json

import numpy as np
import pytest

from llm_core.config import DataConfig, SourceConfig
from llm_core.data import shards, sources
from llm_core.data.sources import parquet


@pytest.fixture(scope="module")
def tokens(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("shards")
    data = DataConfig(num_docs=120, val_fraction=0.1, sft=SourceConfig(num_docs=30))
    sources.write_dataset("pretrain", data, root / "raw")
    sources.write_dataset("sft", data, root / "sft")
    shards.tokenize_pretrain(root / "raw", tokenizer, root / "tokens", shard_tokens=4096, workers=2)
    shards.tokenize_sft(root / "sft", tokenizer, root / "sft_tokens")
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
    manifest = shards.load_manifest(tokens / "sft_tokens", tokenizer)
    assert manifest["kind"] == "sft"
    t, m, o = shards.sft_arrays(tokens / "sft_tokens", "train", manifest)
    assert len(t) == len(m) == o[-1] and m.sum() > 0


def test_truncated_shard_is_detected(tokens, tokenizer, tmp_path):
    import shutil

    copy = tmp_path / "tokens"
    shutil.copytree(tokens / "tokens", copy)
    manifest = shards.load_manifest(copy, tokenizer)
    victim = copy / "train_00000.npy"
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


@pytest.fixture(scope="module")
def grouped_raw(tmp_path_factory):
    """A corpus in many small row groups, so that a tokenize run has many tasks and shards."""
    root = tmp_path_factory.mktemp("grouped")
    mp = pytest.MonkeyPatch()
    mp.setattr(parquet, "ROWS_PER_GROUP", 16)
    sources.write_dataset("pretrain", DataConfig(num_docs=300, val_fraction=0.1), root / "raw", rows_per_shard=100)
    mp.undo()
    return root / "raw"


def read_all(token_dir):
    manifest = json.loads((token_dir / "manifest.json").read_text())
    return {name: np.load(token_dir / name).tolist() for name in sorted(manifest["files"])}, manifest


def test_processes_give_the_same_shards_as_one_process(grouped_raw, tokenizer, tmp_path):
    one = shards.tokenize_pretrain(grouped_raw, tokenizer, tmp_path / "one", shard_tokens=2000, workers=1)
    two = shards.tokenize_pretrain(grouped_raw, tokenizer, tmp_path / "two", shard_tokens=2000, workers=2)
    assert one == two and len(one["files"]) > 4
    assert read_all(tmp_path / "one") == read_all(tmp_path / "two")
    assert not (tmp_path / "two.resume.tmp").exists()  # no work folder left behind


def test_killed_run_resumes_after_the_last_finished_shard(grouped_raw, tokenizer, tmp_path, monkeypatch):
    reference = tmp_path / "ref"
    shards.tokenize_pretrain(grouped_raw, tokenizer, reference, shard_tokens=1500, workers=1)
    calls = []
    real_call, real_save = shards.GroupEncoder.__call__, shards._save

    def counting(self, task):
        calls.append(task)
        return real_call(self, task)

    def dying(path, array, files):
        if len(files) == 3:  # three shards are finished: the process dies writing the fourth
            raise KeyboardInterrupt
        real_save(path, array, files)

    monkeypatch.setattr(shards.GroupEncoder, "__call__", counting)
    monkeypatch.setattr(shards, "_save", dying)
    out = tmp_path / "tokens"
    with pytest.raises(KeyboardInterrupt):
        shards.tokenize_pretrain(grouped_raw, tokenizer, out, shard_tokens=1500, workers=1)
    assert not out.exists()
    first_run = len(calls)
    monkeypatch.setattr(shards, "_save", real_save)
    calls.clear()
    shards.tokenize_pretrain(grouped_raw, tokenizer, out, shard_tokens=1500, workers=1)
    total = len(shards._tasks(grouped_raw, "train")) + len(shards._tasks(grouped_raw, "val"))
    assert len(calls) < total and first_run + len(calls) < total + 3  # finished shards' groups are not redone
    assert read_all(out) == read_all(reference)
    assert not (tmp_path / "tokens.resume.tmp").exists()


def test_other_tokenizer_does_not_resume_a_stale_run(grouped_raw, tokenizer, tmp_path, monkeypatch):
    def dying(path, array, files):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards, "_save", dying)
    with pytest.raises(KeyboardInterrupt):
        shards.tokenize_pretrain(grouped_raw, tokenizer, tmp_path / "tokens", shard_tokens=1500, workers=1)
    stale = list((tmp_path / "tokens.resume.tmp").iterdir())
    assert len(stale) == 1
    monkeypatch.undo()
    shards.tokenize_pretrain(grouped_raw, tokenizer, tmp_path / "tokens", shard_tokens=1024, workers=1)
    assert not (tmp_path / "tokens.resume.tmp").exists()
    manifest = shards.load_manifest(tmp_path / "tokens", tokenizer)
    assert all(f["tokens"] == 1024 for n, f in manifest["files"].items() if n < "train_00001.npy")


def test_pretrained_encoding_tokenizes_pretraining_and_refuses_chats(tokens, tmp_path, monkeypatch):
    import tiktoken

    from llm_core.data.tokenizer import SPLIT_PATTERN, Tokenizer

    ranks = {bytes([b]): b for b in range(256)} | {b"th": 256, b"the": 257}
    fake = tiktoken.Encoding("fake", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 258}, explicit_n_vocab=259)
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: fake)
    tok = Tokenizer.from_tiktoken_name("gpt2")
    manifest = shards.tokenize_pretrain(tokens / "raw", tok, tmp_path / "t", shard_tokens=100_000, workers=1)
    with pytest.raises(ValueError, match="chat role tokens"):
        shards.tokenize_sft(tokens / "sft", tok, tmp_path / "sft")
    assert not (tmp_path / "sft").exists()
    stream = np.concatenate(shards.pretrain_shards(tmp_path / "t", "train", manifest))
    assert stream[0] == 258 and (stream == 258).sum() == len(list(sources.iter_texts(tokens / "raw", "train")))
