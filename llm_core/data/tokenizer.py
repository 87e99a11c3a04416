"""Byte-level BPE: training (Hugging Face `tokenizers`), special tokens, chat template, fast encoding (tiktoken).

A tokenizer directory holds either
    tokenizer.json          Hugging Face format (loads in `tokenizers` and `transformers.PreTrainedTokenizerFast`)
    tokenizer_config.json   special tokens and the chat template for `transformers`
or, for a pretrained OpenAI encoding,
    tiktoken.json           {"tiktoken": "<name>"}: no Hugging Face files, no chat roles
or, for the tokenizer of an imported Hugging Face model (`tokenizer.source: hf`),
    tokenizer.json + tokenizer_config.json as that model ships them, plus hf.json (where they came from). Such a
    tokenizer encodes through `tokenizers` itself (its ids are not tiktoken ranks), its specials and chat template are
    its own (`chat.render` renders the template), and documents open with its bos token (eos when it has none).

Ids follow one layout: 256 single bytes (id == byte value), merged tokens in the order they were learned, special
tokens last. The id of a non-special token is its tiktoken rank, so the tiktoken `Encoding` that does the bulk
encoding and the Hugging Face tokenizer give identical ids (see `_merge_rules` for why that holds).

`Tokenizer.encode` never turns text into special tokens: a document that contains the literal string "<|end|>" gets
ordinary tokens for it. The Hugging Face tokenizer does parse special strings (the chat template relies on it), so
the two agree on text that contains no special string.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tiktoken
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from llm_core.files import write_bytes, write_json

BOS = "<|bos|>"
END = "<|end|>"
SPECIAL_TOKENS = (BOS, "<|user|>", "<|assistant|>", "<|system|>", END)

# GPT-4's split, except that digits group by at most 2: at vocab sizes of a few thousand, 1000 three-digit tokens
# would cost more than they save. Oniguruma (HF `tokenizers`) and fancy-regex (tiktoken) split text identically
# with it, which matters as much as the merges: checked on every code point below U+32000 in context, and the tests
# compare the two engines on random Unicode.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

# Specials glued to the content with no whitespace, so that the template and `chat.render` agree token for token.
# An unknown role would render as a marker that is not a special token, hence the error.
CHAT_TEMPLATE = (
    "{{ '<|bos|>' }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('role must be system, user or assistant, got ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS) + 1  # every byte, every special, and at least one merge
HF_MARKER = "hf.json"  # beside a Hugging Face model's own tokenizer files (tokenizer.source: hf)

# transformers' own "no limit" value; the export writes the model's real context length.
_UNLIMITED_LENGTH = int(1e30)


@functools.cache
def _byte_to_char() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE in `tokenizers` uses for its vocab strings."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = (b for b in range(256) if b not in table)
    table.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return table


@functools.cache
def _translate_tables() -> tuple[dict[int, int], dict[int, int]]:
    """str.translate tables for the two directions (C speed: vocabularies have 10^4-10^5 tokens). Code points below
    256 that are not in the alphabet map to U+FFFF, which the latin-1 encoding step then refuses."""
    to_char = {b: ord(c) for b, c in _byte_to_char().items()}
    to_byte = {ord(c): b for b, c in _byte_to_char().items()}
    to_byte.update({b: 0xFFFF for b in range(256) if b not in to_byte})
    return to_char, to_byte


def _to_chars(token: bytes) -> str:
    return token.decode("latin-1").translate(_translate_tables()[0])


def _to_bytes(token: str) -> bytes:
    """Raises KeyError for a character outside the byte-level alphabet."""
    try:
        return token.translate(_translate_tables()[1]).encode("latin-1")
    except UnicodeEncodeError:
        raise KeyError(token) from None


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


# ----------------------------------------------------------------------------------------------------------------------
# From ranked tokens to a Hugging Face tokenizer that encodes exactly like tiktoken


def _merge_rules(ranked: list[bytes]) -> list[tuple[str, str]]:
    """HF merge rules under which HF's BPE makes exactly the merges tiktoken makes.

    tiktoken repeatedly merges the adjacent pair whose *concatenation* has the lowest rank. HF BPE repeatedly merges
    the adjacent pair whose *merge rule* comes first, and only pairs that have a rule. With one rule per token the two
    can differ: pieces [a, bc] merge into "abc" in tiktoken, but not in HF when "abc"'s only rule is (ab, c).

    So every token t gets a rule for EVERY split (x, y) with x and y in the vocab, and the rules of t sit together at
    t's rank. Then two adjacent tokens have a rule iff their concatenation is a token, and rules order like the ranks
    of their concatenations, so at each step both algorithms pick the same token t. Where t can form at several
    places, tiktoken takes the leftmost and HF the lowest (rule, position); the rule is the same everywhere, because
    each occurrence of t grew from t's bytes alone along one deterministic merge path and so is split at the same
    place. Both also return a piece that is itself a token without merging (tiktoken's lookup, HF's
    `ignore_merges`). The order of the splits within t is therefore irrelevant.
    """
    vocab = {_to_chars(tok) for tok in ranked}
    rules = []
    for tok in ranked[256:]:
        s = _to_chars(tok)
        rules.extend((s[:cut], s[cut:]) for cut in range(1, len(s)) if s[:cut] in vocab and s[cut:] in vocab)
    return rules


def _build_hf(ranked: list[bytes]) -> HFTokenizer:
    """The Hugging Face tokenizer for tokens whose id is their position in `ranked` (bytes 0..255 first)."""
    assert ranked[:256] == [bytes([b]) for b in range(256)], "the first 256 tokens must be the bytes in order"
    assert len(set(ranked)) == len(ranked), "duplicate token"
    vocab = {_to_chars(tok): rank for rank, tok in enumerate(ranked)}
    # No unk token: every byte is in the vocab, so nothing is ever unknown.
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=_merge_rules(ranked), ignore_merges=True))
    hf.pre_tokenizer = _pre_tokenizer()
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
    bos_id = hf.token_to_id(BOS)
    assert bos_id == len(ranked), "special tokens must follow the byte-level tokens"
    # transformers' tokenizer(text) then starts documents with <|bos|>, like the token shards do.
    hf.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)])
    return hf


def _ranked_from_trainer(model: dict) -> list[bytes]:
    """Tokens of a freshly trained BPE model in tiktoken rank order: bytes by value, then merges as learned."""
    ranked = [bytes([b]) for b in range(256)]
    seen = set(ranked)
    for rule in model["merges"]:
        left, right = rule.split(" ", 1) if isinstance(rule, str) else rule
        tok = _to_bytes(left + right)
        # Two rules can build the same string; the token's rank is the first one.
        if tok not in seen:
            seen.add(tok)
            ranked.append(tok)
    assert seen == {_to_bytes(s) for s in model["vocab"]}, "trainer vocab is not bytes + merges"
    return ranked


# ----------------------------------------------------------------------------------------------------------------------
# Training


def _check_int(key: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum} (got {value!r})")


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    """The texts, after checking (without reading them all) that at least one is non-empty."""
    it = iter(texts)
    for text in it:
        if text:
            return itertools.chain([text], it)
    raise ValueError("corpus is empty: the tokenizer got no text to train on; check that the pretraining corpus "
                     "(data/raw/pretrain) has documents, e.g. rerun its download stage")



def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path, min_frequency: int = 2,
                    show_progress: bool = False, *, model_max_length: int | None = None) -> Tokenizer:
    """Train a byte-level BPE of at most `vocab_size` tokens (specials included) and save it to `out_dir`.

    The vocab ends up smaller than asked when the corpus has no pair left that occurs `min_frequency` times.
    `model_max_length` goes to tokenizer_config.json; None means no limit.
    """
    _check_int("tokenizer.vocab_size", vocab_size, MIN_VOCAB_SIZE)
    _check_int("tokenizer.min_frequency", min_frequency, 1)
    texts = _non_empty(texts)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),  # specials are added after training, with the last ids
        min_frequency=min_frequency,
        show_progress=show_progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    raw = HFTokenizer(models.BPE())
    raw.pre_tokenizer = _pre_tokenizer()
    raw.train_from_iterator(texts, trainer=trainer)
    hf = _build_hf(_ranked_from_trainer(json.loads(raw.to_str())["model"]))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": END,
        "additional_special_tokens": [s for s in SPECIAL_TOKENS if s not in (BOS, END)],
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": _UNLIMITED_LENGTH if model_max_length is None else model_max_length,
        "clean_up_tokenization_spaces": False,  # decoding must give back the exact text
    }
    data = hf.to_str(pretty=True).encode()
    for stale in ("tiktoken.json", HF_MARKER):  # from_dir must not find a stale pretrained reference
        (out / stale).unlink(missing_ok=True)
    write_json(out / "tokenizer_config.json", config)
    write_bytes(out / "tokenizer.json", data)  # last: its presence means the directory is complete
    return Tokenizer._from_hf(hf, data)


def write_tiktoken_reference(name: str, out_dir: str | Path) -> Tokenizer:
    """Use the pretrained tiktoken encoding `name` (e.g. "gpt2") as the tokenizer in `out_dir`."""
    tok = Tokenizer.from_tiktoken_name(name)  # fail now, not in a later stage
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("tokenizer.json", "tokenizer_config.json", HF_MARKER):
        (out / stale).unlink(missing_ok=True)
    write_json(out / "tiktoken.json", {"tiktoken": name})
    return tok


def compression_report(tok: Tokenizer, texts: Iterable[str], num_threads: int | None = None) -> dict:
    """UTF-8 bytes per token on `texts` (held-out text: the number that says how much context a token buys)."""
    n_bytes = n_tokens = 0
    batch: list[str] = []
    for text in itertools.chain(texts, [None]):
        if text is not None:
            batch.append(text)
        if batch and (text is None or len(batch) >= 1024):
            n_bytes += sum(len(t.encode()) for t in batch)
            n_tokens += sum(len(ids) for ids in tok.encode_batch(batch, num_threads=num_threads))
            batch = []
    return {"source": tok.name, "vocab_size": tok.vocab_size, "bytes_per_token": n_bytes / max(n_tokens, 1),
            "val_bytes": n_bytes, "val_tokens": n_tokens}


# ----------------------------------------------------------------------------------------------------------------------
# Loading and encoding


class Tokenizer:
    """Encode/decode with tiktoken; the Hugging Face tokenizer (`hf`) is there for export and cross-checks."""

    def __init__(self, *, name: str, vocab_size: int, special_ids: dict[str, int], bos_id: int, end_id: int,
                 fingerprint: str, hf: HFTokenizer | None = None, encoding: tiktoken.Encoding | None = None,
                 chat_template: str | None = None, template_vars: dict | None = None):
        # Use the from_* constructors; at least one of `hf` and `encoding` is given.
        self.name = name
        # a Hugging Face model's own chat template (Jinja) and the variables it reads (bos_token, ...); None: ours
        self.chat_template, self.template_vars = chat_template, dict(template_vars or {})
        self._vocab_size = vocab_size
        self._special_ids = dict(special_ids)
        self._bos_id, self._end_id = bos_id, end_id
        self._fingerprint = fingerprint
        self._hf = hf
        self._encoding = encoding
        self._token_bytes: np.ndarray | None = None

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if (path / HF_MARKER).is_file():
            return cls.from_pretrained_hf(path)
        if (path / "tokenizer.json").is_file():
            data = (path / "tokenizer.json").read_bytes()
            _check_layout(json.loads(data), path / "tokenizer.json")
            return cls._from_hf(HFTokenizer.from_str(data.decode()), data)
        if (path / "tiktoken.json").is_file():
            return cls.from_tiktoken_name(json.loads((path / "tiktoken.json").read_text())["tiktoken"])
        raise FileNotFoundError(f"no tokenizer at {path}; run `dvc repro train_tokenizer` first")

    @classmethod
    def _from_hf(cls, hf: HFTokenizer, data: bytes) -> Tokenizer:
        specials = {t.content: i for i, t in hf.get_added_tokens_decoder().items()}
        return cls(name="bpe", vocab_size=hf.get_vocab_size(with_added_tokens=True), special_ids=specials,
                   bos_id=specials[BOS], end_id=specials[END], fingerprint=hashlib.sha256(data).hexdigest(), hf=hf)

    @classmethod
    def from_pretrained_hf(cls, path: str | Path) -> Tokenizer:
        """A Hugging Face model's own tokenizer: tokenizer.json + tokenizer_config.json (specials, chat template)."""
        path = Path(path)
        try:
            data = (path / "tokenizer.json").read_bytes()
            config = json.loads((path / "tokenizer_config.json").read_text())
            hf = HFTokenizer.from_str(data.decode())
        except Exception as e:  # OSError, bad JSON, or the plain Exception `tokenizers` raises
            raise ValueError(f"{path} does not hold a readable Hugging Face tokenizer (tokenizer.json + "
                             f"tokenizer_config.json): {e}; rerun `dvc repro import_model train_tokenizer`") from None
        added = hf.get_added_tokens_decoder()
        specials = {t.content: i for i, t in added.items() if t.special}
        names = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        ids = {k: hf.token_to_id(v) for k, v in names.items() if v is not None}
        end = ids.get("eos_token")
        bos = ids.get("bos_token", end)  # GPT-style tokenizers separate documents with their end-of-text token
        if bos is None or end is None:
            raise ValueError(f"{path}/tokenizer_config.json names no eos_token (or bos_token) in the vocabulary: "
                             "documents and chat turns need one to end with")
        vocab_size = max([hf.get_vocab_size(with_added_tokens=True) - 1, *added]) + 1
        fingerprint = hashlib.sha256(data + json.dumps(config, sort_keys=True).encode()).hexdigest()
        return cls(name=f"hf:{json.loads((path / HF_MARKER).read_text()).get('name', path.name)}",
                   vocab_size=vocab_size, special_ids=specials, bos_id=bos, end_id=end, fingerprint=fingerprint,
                   hf=hf, encoding=_HFEncoding(data), chat_template=config.get("chat_template"),
                   template_vars={k: v for k, v in names.items() if v is not None})

    @classmethod
    def from_tiktoken_name(cls, name: str) -> Tokenizer:
        """A pretrained tiktoken encoding ("gpt2", "cl100k_base", ...).

        Its end-of-text token serves as both <|bos|> and <|end|>; it has no chat role tokens and no tokenizer.json.
        """
        if name not in tiktoken.list_encoding_names():
            raise ValueError(f"unknown tiktoken encoding {name!r}; known: {', '.join(tiktoken.list_encoding_names())}")
        try:
            enc = tiktoken.get_encoding(name)
        except Exception as err:  # the download failed; its error type depends on the network stack
            raise ValueError(
                f"tiktoken encoding {name!r} could not be loaded ({type(err).__name__}: {err}); it is downloaded on "
                "first use and cached (TIKTOKEN_CACHE_DIR), so offline it must be cached already; or use "
                "`tokenizer.source: train`") from err
        if "<|endoftext|>" not in enc.special_tokens_set:
            raise ValueError(f"tiktoken encoding {name!r} has no <|endoftext|> token to separate documents")
        eot = enc.eot_token
        specials = {s: enc.encode_single_token(s) for s in enc.special_tokens_set}
        h = hashlib.sha256(f"tiktoken:{name}\n{enc._pat_str}\n".encode())
        for i in range(enc.n_vocab):
            h.update(b"%d:%s\n" % (i, _single_token_bytes(enc, i) or b""))
        return cls(name=f"tiktoken:{name}", vocab_size=enc.n_vocab, special_ids=specials, bos_id=eot, end_id=eot,
                   fingerprint=h.hexdigest(), encoding=enc)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name}, vocab_size={self.vocab_size}, fingerprint={self.fingerprint[:12]})"

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def bos_id(self) -> int:
        return self._bos_id

    @property
    def end_id(self) -> int:
        return self._end_id

    @property
    def special_ids(self) -> dict[str, int]:
        return dict(self._special_ids)

    @property
    def fingerprint(self) -> str:
        """sha256 of tokenizer.json: token shards record it, so shards made by another tokenizer are refused."""
        return self._fingerprint

    @property
    def hf(self) -> HFTokenizer:
        if self._hf is None:
            raise ValueError(f"{self.name} is a pretrained tiktoken encoding and has no Hugging Face tokenizer; "
                             "use `tokenizer.source: train` for one")
        return self._hf

    @property
    def tiktoken_encoding(self) -> tiktoken.Encoding:
        if self._encoding is None:
            self._encoding = _tiktoken_from_hf(self._hf, self._fingerprint)
        return self._encoding

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; special-token strings in it are encoded as ordinary text."""
        return self.tiktoken_encoding.encode_ordinary(text)

    def encode_batch(self, texts: Iterable[str], num_threads: int | None = None) -> list[list[int]]:
        """`encode` over many texts on `num_threads` threads (default: all cores); tiktoken releases the GIL."""
        texts = list(texts)
        encode = self.tiktoken_encoding.encode_ordinary
        threads = min(num_threads or os.cpu_count() or 1, len(texts))
        if threads <= 1:
            return [encode(t) for t in texts]
        # tiktoken's encode_ordinary_batch makes one future per text; on paragraph-sized documents that bookkeeping,
        # done under the GIL, costs as much as the encoding itself (it ran 2x slower). Chunks amortise it.
        step = -(-len(texts) // (threads * 4))
        chunks = [texts[i:i + step] for i in range(0, len(texts), step)]
        with ThreadPoolExecutor(threads) as pool:
            return [ids for part in pool.map(lambda chunk: [encode(t) for t in chunk], chunks) for ids in part]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 (a cut multi-byte character) become U+FFFD."""
        return self.tiktoken_encoding.decode(list(ids), errors="replace")

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each id stands for (0 for special tokens): the denominator of bits-per-byte."""
        if self._token_bytes is None:
            enc, specials = self.tiktoken_encoding, set(self._special_ids.values())
            lengths = [0 if i in specials else len(_single_token_bytes(enc, i) or b"") for i in range(self.vocab_size)]
            self._token_bytes = np.array(lengths, dtype=np.int64)
            self._token_bytes.flags.writeable = False  # shared by every caller
        return self._token_bytes


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json gives it: a string, or {"content": ...} in older files."""
    return value.get("content") if isinstance(value, dict) else value


class _HFEncoding:
    """What the pipeline uses of tiktoken's Encoding, over a Hugging Face model's own tokenizer.json: ordinary
    encoding (special-token strings in the text are text, as with `Tokenizer.encode`), decoding, and the bytes of
    each token (bits per byte, streaming). Pickled as its JSON, for the tokenize stage's worker processes."""

    def __init__(self, data: bytes):
        self._data = data
        self._tok = HFTokenizer.from_str(data.decode())
        self._tok.encode_special_tokens = True
        self._bytes: list[bytes | None] | None = None

    def __getstate__(self) -> bytes:
        return self._data

    def __setstate__(self, data: bytes) -> None:
        self.__init__(data)

    def encode_ordinary(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], errors: str = "replace") -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def decode_single_token_bytes(self, i: int) -> bytes:
        if self._bytes is None:
            self._bytes = _hf_token_bytes(json.loads(self._data))
        if not 0 <= i < len(self._bytes) or self._bytes[i] is None:
            raise KeyError(i)
        return self._bytes[i]


def _hf_token_bytes(spec: dict) -> list[bytes | None]:
    """The bytes each id stands for, by how the tokenizer writes bytes in its vocab: byte-level BPE (GPT-2, Llama 3,
    Qwen2, SmolLM2) maps every byte to a printable character; SentencePiece-style BPE (Llama 2, TinyLlama,
    Mistral) writes a space as U+2581 and raw bytes as <0xNN> tokens; anything else is taken as UTF-8 text."""
    vocab = dict((spec.get("model") or {}).get("vocab") or {})
    vocab.update({t["content"]: t["id"] for t in spec.get("added_tokens", [])})
    byte_level = "ByteLevel" in json.dumps(spec.get("decoder")) or "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
    added = {t["content"] for t in spec.get("added_tokens", [])}
    out: list[bytes | None] = [None] * (max(vocab.values(), default=-1) + 1)
    for text, i in vocab.items():
        if text in added:
            out[i] = text.encode()
        elif byte_level:
            try:
                out[i] = _to_bytes(text)
            except KeyError:
                out[i] = text.encode()
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            out[i] = bytes([int(text[3:5], 16)])
        else:
            out[i] = text.replace("\u2581", " ").encode()
    return out


def _single_token_bytes(enc: tiktoken.Encoding, i: int) -> bytes | None:
    try:
        return enc.decode_single_token_bytes(i)
    except KeyError:  # an unused id inside some pretrained encodings' range
        return None


def _tiktoken_from_hf(hf: HFTokenizer, fingerprint: str) -> tiktoken.Encoding:
    specials = {t.content: i for i, t in hf.get_added_tokens_decoder().items()}
    ranks = {_to_bytes(s): i for s, i in hf.get_vocab(with_added_tokens=False).items()}
    return tiktoken.Encoding(f"bpe-{fingerprint[:12]}", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens=specials, explicit_n_vocab=len(ranks) + len(specials))


def _check_layout(spec: dict, path: Path) -> None:
    """Refuse a tokenizer.json whose ids are not tiktoken ranks: tiktoken would silently encode it differently."""
    model = spec.get("model") or {}
    vocab = model.get("vocab") or {}
    specials = sorted((t["id"], t["content"]) for t in spec.get("added_tokens", []))
    rules = [tuple(r.split(" ", 1)) if isinstance(r, str) else tuple(r) for r in model.get("merges") or []]
    try:
        ranked = [_to_bytes(s) for s, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    except KeyError:  # a character outside the byte-level alphabet: not a byte-level BPE
        ranked = []
    ok = (model.get("type") == "BPE" and model.get("ignore_merges") is True
          and sorted(vocab.values()) == list(range(len(vocab)))
          and ranked[:256] == [bytes([b]) for b in range(256)]
          and specials == list(enumerate(SPECIAL_TOKENS, start=len(vocab)))
          and json.dumps(SPLIT_PATTERN)[1:-1] in json.dumps(spec.get("pre_tokenizer"))
          and rules == _merge_rules(ranked))
    if not ok:
        raise ValueError(f"{path} was not written by llm_core.data.tokenizer.train_tokenizer (its ids are not tiktoken "
                         "ranks, or its split pattern or special tokens differ); retrain it with "
                         "`dvc repro train_tokenizer`")
