"""Token shards: writing, the manifest, and verified memory-mapped reading.

Layout of `data/tokens/`:
    pretrain/{train,val}_00000.npy   documents as one stream, each opened by <|bos|>
    sft/{train,val}_tokens.npy, sft/{train,val}_mask.npy, sft/{train,val}_offsets.npy   rendered chats + loss masks
    manifest.json   tokenizer fingerprint, dtype, per-file token counts and sha256
uint16 when the vocabulary fits in it (half the disk and page cache of uint32), else uint32.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from llm_core import chat, sources

MANIFEST = "manifest.json"
ENCODE_BATCH_DOCS = 512


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _save(path: Path, array: np.ndarray, files: dict) -> None:
    np.save(path, array)
    files[str(path.relative_to(path.parents[1]))] = {"tokens": int(array.shape[0]), "sha256": _sha256(path)}


def tokenize_all(raw_pretrain: Path, raw_sft: Path | None, tokenizer, out_dir: Path, shard_tokens: int,
                 workers: int) -> dict:
    """Encode the pretrain corpus (and the SFT chats) into shards; returns the manifest."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "pretrain").mkdir(parents=True)
    dtype = token_dtype(tokenizer.vocab_size)
    files: dict = {}
    for split in ("train", "val"):
        _encode_pretrain(raw_pretrain, split, tokenizer, tmp / "pretrain", dtype, shard_tokens, workers, files)
    if raw_sft is not None:
        (tmp / "sft").mkdir()
        for split in ("train", "val"):
            _encode_sft(raw_sft, split, tokenizer, tmp / "sft", dtype, files)
    manifest = {"tokenizer_fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size,
                "bos_id": tokenizer.bos_id, "dtype": dtype.name, "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)  # swap in complete output only: a failed run keeps the previous shards
    return manifest


def _encode_pretrain(raw: Path, split: str, tokenizer, out: Path, dtype, shard_tokens: int, workers: int,
                     files: dict) -> None:
    buf: list[np.ndarray] = []
    n_buf = 0
    n_shard = 0
    batch: list[str] = []

    def flush_batch():
        nonlocal n_buf
        for ids in tokenizer.encode_batch(batch, num_threads=workers):
            arr = np.empty(len(ids) + 1, dtype=dtype)
            arr[0] = tokenizer.bos_id
            arr[1:] = ids
            buf.append(arr)
            n_buf += arr.shape[0]
        batch.clear()

    def write_shard(final: bool):
        nonlocal buf, n_buf, n_shard
        stream = np.concatenate(buf) if buf else np.empty(0, dtype=dtype)
        while stream.shape[0] >= shard_tokens or (final and stream.shape[0]):
            piece, stream = stream[:shard_tokens], stream[shard_tokens:]
            _save(out / f"{split}_{n_shard:05d}.npy", piece, files)
            n_shard += 1
        buf, n_buf = ([stream] if stream.shape[0] else []), stream.shape[0]

    for text in tqdm(sources.iter_texts(raw, split), desc=f"tokenize {split}", unit="doc", disable=None):
        batch.append(text)
        if len(batch) >= ENCODE_BATCH_DOCS:
            flush_batch()
            if n_buf >= shard_tokens:
                write_shard(final=False)
    flush_batch()
    write_shard(final=True)


def _encode_sft(raw: Path, split: str, tokenizer, out: Path, dtype, files: dict) -> None:
    tokens, masks, offsets = [], [], [0]
    for rec in sources.read_dataset(raw, split, "download_sft"):
        ids, mask = chat.render(rec["messages"], tokenizer)
        tokens.extend(ids)
        masks.extend(mask)
        offsets.append(len(tokens))
    _save(out / f"{split}_tokens.npy", np.asarray(tokens, dtype=dtype), files)
    _save(out / f"{split}_mask.npy", np.asarray(masks, dtype=np.uint8), files)
    _save(out / f"{split}_offsets.npy", np.asarray(offsets, dtype=np.int64), files)


# --------------------------------------------------------------------------------------------------------------------
# Reading


def load_manifest(token_dir: str | Path, tokenizer=None) -> dict:
    """The manifest, checked against the tokenizer that will interpret the ids."""
    path = Path(token_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `dvc repro tokenize` first")
    manifest = json.loads(path.read_text())
    if tokenizer is not None and manifest["tokenizer_fingerprint"] != tokenizer.fingerprint:
        raise ValueError(f"{token_dir} was made by another tokenizer (fingerprint {manifest['tokenizer_fingerprint']}"
                         f", current {tokenizer.fingerprint}); run `dvc repro tokenize` to re-encode the corpus")
    return manifest


def open_shard(token_dir: str | Path, name: str, manifest: dict, verify: bool = False) -> np.ndarray:
    """Memory-map one file of the manifest; its length (and, with verify, its checksum) must match."""
    path = Path(token_dir) / name
    entry = manifest["files"].get(name)
    if entry is None or not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `dvc repro tokenize` to rebuild the token shards")
    try:
        arr = np.load(path, mmap_mode="r")
    except ValueError as e:  # numpy refuses a file shorter than its header promises
        raise ValueError(f"{path} is truncated or corrupt ({e}); run `dvc repro tokenize` to rebuild it") from None
    if arr.shape[0] != entry["tokens"] or (verify and _sha256(path) != entry["sha256"]):
        raise ValueError(f"{path} does not match manifest.json (truncated or modified: {arr.shape[0]} tokens, "
                         f"expected {entry['tokens']}); run `dvc repro tokenize` to rebuild it")
    return arr


def pretrain_shards(token_dir: str | Path, split: str, manifest: dict) -> list[np.ndarray]:
    names = sorted(n for n in manifest["files"] if n.startswith(f"pretrain/{split}_"))
    if not names:
        raise ValueError(f"{token_dir}: no {split} token shards; the corpus may be too small for a {split} split "
                         "(raise data.num_docs or data.val_fraction) — then run `dvc repro tokenize`")
    return [open_shard(token_dir, n, manifest, verify=True) for n in names]


def sft_arrays(token_dir: str | Path, split: str, manifest: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if f"sft/{split}_tokens.npy" not in manifest["files"]:
        raise FileNotFoundError(f"{token_dir} has no SFT tokens; run `dvc repro tokenize`")
    return tuple(open_shard(token_dir, f"sft/{split}_{part}.npy", manifest, verify=True)
                 for part in ("tokens", "mask", "offsets"))


def unigram_bpb(train: list[np.ndarray], val: list[np.ndarray], token_bytes: np.ndarray) -> float:
    """Bits per byte of a unigram model (add-one smoothed token frequencies of train) on val: the baseline a
    model must beat by using context. Special tokens are excluded, as in the model's val_bpb."""
    vocab = len(token_bytes)
    counts = np.ones(vocab, dtype=np.float64)
    for s in train:
        counts += np.bincount(np.asarray(s), minlength=vocab)[:vocab]
    logp = np.log2(counts / counts.sum())
    bits = nbytes = 0.0
    for s in val:
        c = np.bincount(np.asarray(s), minlength=vocab)[:vocab] * (token_bytes > 0)
        bits -= float((c * logp).sum())
        nbytes += float((c * token_bytes).sum())
    return bits / max(nbytes, 1.0)


def data_fingerprint(manifest: dict) -> str:
    """Identifies the token data a run trained on (checksums of every file)."""
    blob = json.dumps(sorted((k, v["sha256"]) for k, v in manifest["files"].items())).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
