"""llm_core.data.tokenizer: a throwaway BPE trained in-process; tiktoken and Hugging Face must give identical ids."""

import hashlib
import itertools
import json
import random

import pytest
import tiktoken
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from llm_core.data import tokenizer as tk
from llm_core.data.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer

VOCAB = 512

WORDS = ("the cat sat on a mat while it rained and we didn't know why she'd left , so they'll say I'm fine "
         "you're right we've been there THE QUICK BROWN FOX Hello World naïve café résumé Straße 東京 大阪 "
         "Привет мир γειά σου مرحبا שלום 🙂 🚀 ¿qué? ¡sí! x=1; f(x) -> y [0, 1] {'a': 2} #tag @user").split()
# Characters where regex engines and Unicode tables tend to disagree: odd whitespace, apostrophe + case
# variants, letters and digits outside ASCII, combining marks, astral symbols.
TRICKY = (" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2003\u2028\u2029\u202f\u3000\u200b\ufeff"
          "'sSlLvVeEmMtTdDrR\u017f\u212a\u0130\u0131ßẞ0123456789\u0663\u00b2\u2163\uff11\u0301\u0308"
          "aZ.,;:!?-_\"()[]{}<|>/\\@#$%^&*~`🙂👍🏽\U0001d400\U00020000\U000e0001\ufffd")


def make_corpus(seed: int = 0, n: int = 1500) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 25))]
        if rng.random() < 0.3:
            words.append(str(rng.randint(0, 10**rng.randint(1, 9))))
        if rng.random() < 0.2:
            words.append(f"{rng.randint(1, 31)}/{rng.randint(1, 12)}/{rng.randint(1900, 2100)}")
        seps = [rng.choice([" ", " ", " ", "  ", "\n", "\n\n", "\t", "   "]) for _ in words]
        docs.append("".join(w + s for w, s in zip(words, seps)).rstrip() + rng.choice([".", "!", "?", "...", "\n"]))
    return docs


def random_unicode(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 40)):
        kind = rng.random()
        if kind < 0.4:
            out.append(rng.choice(TRICKY))
        elif kind < 0.6:
            out.append(rng.choice(WORDS) + rng.choice(["", " ", "  ", "\n"]))
        elif kind < 0.8:
            out.append(chr(rng.randint(0x20, 0x2FF)))
        else:  # anywhere in Unicode except the surrogates, which a str bound for UTF-8 cannot hold
            cp = rng.randint(0, 0x10FFFF)
            out.append(chr(cp if not 0xD800 <= cp < 0xE000 else cp - 0x800))
    return "".join(out)


def edge_cases() -> list[str]:
    return ["", " ", "  ", "\n", "\n\n\n", " \n ", "a", "hello world", "Hello  World", "don't", "DON'T", "we'LL",
            "it's' 's", "12345678901", "3.14159", "x  \n  y", "   leading", "trailing   ", "tabs\t\tand\ttabs",
            "naïve café 東京 🙂", "😀😀😀", "\u00a0nbsp\u00a0", "a\u0301e\u0308", "ſ'S'ſ", "\r\n\r\n",
            "((([[[{{{", "...!!!???", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "                                  "]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(make_corpus(), VOCAB, out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    return Tokenizer.from_dir(tok_dir)


@pytest.fixture(scope="module")
def samples():
    rng = random.Random(1234)
    return edge_cases() + make_corpus(seed=7, n=300) + [random_unicode(rng) for _ in range(1500)]


def hf_ids(tok: Tokenizer, text: str) -> list[int]:
    return tok.hf.encode(text, add_special_tokens=False).ids


def test_tiktoken_ids_equal_hf_ids(tok, samples):
    assert tok.tiktoken_encoding.n_vocab == tok.hf.get_vocab_size() == tok.vocab_size
    for text in samples:
        assert tok.encode(text) == hf_ids(tok, text), repr(text)


def test_encode_batch_equals_encode(tok, samples):
    assert tok.encode_batch(samples, num_threads=2) == [tok.encode(s) for s in samples]
    assert tok.encode_batch(iter(samples[:10])) == [tok.encode(s) for s in samples[:10]]


def test_decode_roundtrip_and_token_bytes(tok, samples):
    token_bytes = tok.token_bytes()
    assert token_bytes.shape == (tok.vocab_size,)
    for text in samples:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert int(token_bytes[ids].sum()) == len(text.encode())
    assert tok.decode([0xC3]) == "\ufffd"  # half of "é": ids below 256 are single bytes


def test_files_and_vocab_size(tok_dir, tok):
    assert sorted(p.name for p in tok_dir.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]  # no temp files
    assert tok.vocab_size == VOCAB  # the corpus has enough pairs to fill it
    assert HFTokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size() == VOCAB
    assert tok.fingerprint == hashlib.sha256((tok_dir / "tokenizer.json").read_bytes()).hexdigest()
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<|bos|>" and config["eos_token"] == "<|end|>"
    assert config["chat_template"] == tk.CHAT_TEMPLATE
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_small_corpus_gives_smaller_vocab(tmp_path):
    small = train_tokenizer(["abc abc abd"] * 3, 1000, tmp_path)
    assert tk.MIN_VOCAB_SIZE <= small.vocab_size < 1000
    assert small.encode("abc abd") == hf_ids(small, "abc abd")


def test_special_tokens(tok):
    n = tok.vocab_size
    assert tok.special_ids == {s: n - len(SPECIAL_TOKENS) + i for i, s in enumerate(SPECIAL_TOKENS)}
    assert tok.bos_id == tok.special_ids["<|bos|>"] == n - 5
    assert tok.end_id == tok.special_ids["<|end|>"] == n - 1
    assert list(tok.token_bytes()[n - 5:]) == [0] * 5
    for s in SPECIAL_TOKENS:
        ids = tok.encode(f"x{s}y {s}")
        assert not set(ids) & set(tok.special_ids.values())
        assert tok.decode(ids) == f"x{s}y {s}"
    assert tok.decode([tok.bos_id]) == "<|bos|>"
    # The HF tokenizer parses them (the chat template needs that) and starts a document with <|bos|>.
    assert hf_ids(tok, "<|user|>") == [tok.special_ids["<|user|>"]]
    assert tok.hf.encode("hi").ids == [tok.bos_id] + tok.encode("hi")


def test_byte_tokens_come_first_in_byte_order(tok):
    enc = tok.tiktoken_encoding
    assert [enc.decode_single_token_bytes(i) for i in range(256)] == [bytes([b]) for b in range(256)]


def test_transformers_loads_it_and_renders_the_chat_template(tok_dir, tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    assert hf.bos_token_id == tok.bos_id and hf.eos_token_id == tok.end_id
    messages = [{"role": "user", "content": "hi"}]
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|bos|><|user|>hi<|end|><|assistant|>"
    assert hf.apply_chat_template(messages + [{"role": "assistant", "content": "ok"}], tokenize=False) == (
        "<|bos|><|user|>hi<|end|><|assistant|>ok<|end|>")
    s = tok.special_ids
    assert hf(text, add_special_tokens=False)["input_ids"] == (
        [tok.bos_id, s["<|user|>"]] + tok.encode("hi") + [tok.end_id, s["<|assistant|>"]])
    assert hf.decode(tok.encode("naïve café 東京 🙂")) == "naïve café 東京 🙂"


@pytest.mark.parametrize("vocab_size", [0, 100, tk.MIN_VOCAB_SIZE - 1, 300.0, True])
def test_bad_vocab_size(tmp_path, vocab_size):
    with pytest.raises(ValueError, match="tokenizer.vocab_size"):
        train_tokenizer(["some text"], vocab_size, tmp_path)


@pytest.mark.parametrize("texts", [[], ["", ""], iter([])])
def test_empty_corpus(tmp_path, texts):
    with pytest.raises(ValueError, match="corpus is empty"):
        train_tokenizer(texts, VOCAB, tmp_path)
    assert not (tmp_path / "tokenizer.json").exists()


def test_missing_dir_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro train_tokenizer"):
        Tokenizer.from_dir(tmp_path / "nope")


def test_foreign_tokenizer_json_is_refused(tok_dir, tmp_path):
    spec = json.loads((tok_dir / "tokenizer.json").read_text())
    spec["model"]["merges"] = spec["model"]["merges"][:-1]  # one rule short: tiktoken would no longer agree
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="train_tokenizer"):
        Tokenizer.from_dir(tmp_path)


# Regression for the merge-rule rewrite. A vocab straight out of BPE training already encodes the same with its
# own one-rule-per-token merges (each token's bytes replay its training path), so no training corpus exposes the
# difference; hand-built rank lists do, and the rewrite must hold for any rank list.


def _naive_hf(ranked: list[bytes], rules: list[tuple[bytes, bytes]]) -> HFTokenizer:
    vocab = {tk._to_chars(t): i for i, t in enumerate(ranked)}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[(tk._to_chars(a), tk._to_chars(b)) for a, b in rules],
                                ignore_merges=True))
    hf.pre_tokenizer = tk._pre_tokenizer()
    return hf


def _ours(ranked: list[bytes]) -> Tokenizer:
    hf = tk._build_hf(ranked)
    return Tokenizer._from_hf(hf, hf.to_str().encode())


def test_merge_rules_make_hf_follow_concatenation_ranks():
    # "bc" outranks "ab", and "abc" was built as (ab, c): tiktoken merges [a, bc] into "abc", one-rule HF cannot.
    ranked = [bytes([b]) for b in range(256)] + [b"bc", b"ab", b"abc"]
    ours = _ours(ranked)
    expected = [ranked.index(b"abc"), ord("x")]
    assert ours.encode("abcx") == expected
    assert _naive_hf(ranked, [(b"b", b"c"), (b"a", b"b"), (b"ab", b"c")]).encode("abcx").ids != expected
    assert hf_ids(ours, "abcx") == expected


def test_merge_rules_on_random_rank_lists():
    strings = ["".join(p) for n in range(1, 9) for p in itertools.product("ab", repeat=n)]
    naive_mismatches = 0
    for seed in range(30):
        rng = random.Random(seed)
        ranked, rules, pool = [bytes([b]) for b in range(256)], [], [b"a", b"b"]
        for _ in range(rng.randint(3, 30)):
            x, y = rng.choice(pool), rng.choice(pool)
            if x + y not in ranked and len(x + y) <= 8:
                ranked.append(x + y)
                pool.append(x + y)
                rules.append((x, y))
        ours = _ours(ranked)
        want = ours.encode_batch(strings)
        assert [e.ids for e in ours.hf.encode_batch(strings, add_special_tokens=False)] == want, seed
        naive = _naive_hf(ranked, rules).encode_batch(strings, add_special_tokens=False)
        naive_mismatches += sum(e.ids != w for e, w in zip(naive, want))
    assert naive_mismatches > 0  # the check above would catch a missing rewrite


# Pretrained tiktoken encodings: hermetic stand-ins, since the real ones need a download.


def _fake_gpt2():
    ranks = {bytes([b]): b for b in range(256)} | {b"he": 256, b"ll": 257, b"hell": 258, b"hello": 259}
    return tiktoken.Encoding("fake", pat_str=tk.SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 260}, explicit_n_vocab=261)


def test_pretrained_tiktoken_encoding(monkeypatch, tmp_path):
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: _fake_gpt2())
    tok = tk.write_tiktoken_reference("gpt2", tmp_path)
    again = Tokenizer.from_dir(tmp_path)
    assert again.fingerprint == tok.fingerprint and again.vocab_size == 261
    assert again.bos_id == again.end_id == 260
    assert again.encode("hello") == [259] and again.decode([259, 260]) == "hello<|endoftext|>"
    assert again.token_bytes()[259] == 5 and again.token_bytes()[260] == 0
    with pytest.raises(ValueError, match="no Hugging Face tokenizer"):
        again.hf


def test_pretrained_tiktoken_offline(monkeypatch):
    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(ValueError, match="tokenizer.source: train"):
        Tokenizer.from_tiktoken_name("gpt2")
    with pytest.raises(ValueError, match="unknown tiktoken encoding 'gpt3'.*cl100k_base"):
        Tokenizer.from_tiktoken_name("gpt3")


def test_compression_report(tok):
    texts = make_corpus(seed=3, n=50)
    report = tk.compression_report(tok, iter(texts))
    n_bytes = sum(len(t.encode()) for t in texts)
    assert report["val_bytes"] == n_bytes and report["vocab_size"] == VOCAB and report["source"] == "bpe"
    assert report["bytes_per_token"] == pytest.approx(n_bytes / sum(len(tok.encode(t)) for t in texts))
    assert report["bytes_per_token"] > 1.5


@pytest.mark.parametrize("source", ["train", "tiktoken:gpt2"])
def test_train_tokenizer_stage_sources_and_report(source, tmp_path, monkeypatch):
    import sys

    from llm_core.config import DataConfig
    from llm_core.data import sources
    from stages import train_tokenizer as stage

    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: _fake_gpt2())
    monkeypatch.chdir(tmp_path)
    sources.write_dataset("pretrain", DataConfig(num_docs=200, val_fraction=0.1), tmp_path / "raw")
    (tmp_path / "params.yaml").write_text(f"tokenizer:\n  vocab_size: 400\n  source: '{source}'\n")
    monkeypatch.setattr(sys, "argv", ["x", "raw", "tok", "--metrics", "metrics/tokenizer.json"])
    stage.main()
    report = json.loads((tmp_path / "metrics" / "tokenizer.json").read_text())
    tok = Tokenizer.from_dir(tmp_path / "tok")
    assert report["vocab_size"] == tok.vocab_size == (400 if source == "train" else 261)
    assert report["bytes_per_token"] > (1.5 if source == "train" else 1)  # a 400-token BPE compresses the stories
    # the counters behind the figure stay with the tokenizer, out of the metrics people compare
    info = json.loads((tmp_path / "tok" / "report.json").read_text())
    assert info["source"] == ("bpe" if source == "train" else "tiktoken:gpt2") and set(report) < set(info)


def test_tokenizer_source_is_validated(tmp_path):
    from llm_core.config import ParamsError, load_params

    (tmp_path / "params.yaml").write_text("tokenizer:\n  source: gpt2\n")
    with pytest.raises(ParamsError, match=r"tokenizer\.source must be train, hf or tiktoken:<encoding>.*'gpt2'"):
        load_params(tmp_path / "params.yaml")
