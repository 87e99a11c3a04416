"""Token shards: parallel, resumable writing, the manifest, and verified memory-mapped reading.

Two folders, each with its own `manifest.json` (tokenizer fingerprint, dtype, per-file token counts and sha256), so
pretraining and SFT each depend only on their own data:
    data/tokens/pretrain/{train,val}_00000.npy   documents as one stream, each opened by <|bos|>
    data/tokens/sft/{train,val}_{tokens,mask,offsets}.npy   rendered chats + loss masks + chat boundaries
uint16 when the vocabulary fits in it (half the disk and page cache of uint32), else uint32.

Encoding runs on worker processes (tiktoken's Python-side work and the parquet decoding both hold the GIL, so
threads do not scale), one parquet row group per task, results taken back in order. Memory stays bounded: a few
row groups in flight plus at most one shard of tokens. Shards go to a work folder keyed by the tokenizer and the
input files, with a progress file updated after each shard: a killed run, rerun, continues after the last finished
shard. The finished folder is swapped in whole.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from llm_core.data import chat, sources
from llm_core.files import file_sha256, write_json

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
FORMAT_VERSION = 2  # part of the work folder key: a change in the shard layout never resumes an old run
TASKS_IN_FLIGHT = 4  # per worker: enough to keep workers busy, few enough to bound memory


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def _save(path: Path, array: np.ndarray, files: dict) -> None:
    np.save(path, array)
    files[path.name] = {"tokens": int(array.shape[0]), "sha256": file_sha256(path)}



def _swap_in(work: Path, out_dir: Path) -> None:
    """Replace out_dir by the finished work folder: a failed run keeps the previous shards."""
    old = out_dir.with_name(out_dir.name + ".old.tmp")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(work, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _header(tokenizer, dtype: np.dtype, kind: str) -> dict:
    return {"kind": kind, "tokenizer_fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size,
            "bos_id": tokenizer.bos_id, "dtype": dtype.name}


def tokenize_pretrain(raw: Path, tokenizer, out_dir: Path, shard_tokens: int, workers: int) -> dict:
    """Encode the pretraining corpus into shards in out_dir (with its manifest); returns the manifest."""
    out_dir, raw = Path(out_dir), Path(raw)
    dtype = token_dtype(tokenizer.vocab_size)
    tasks = {split: _tasks(raw, split) for split in ("train", "val")}
    key = _run_key(tasks, raw, tokenizer, shard_tokens, dtype)
    work_root = out_dir.with_name(out_dir.name + ".resume.tmp")
    for stale in work_root.glob("*") if work_root.exists() else []:
        if stale.name != key:  # another tokenizer or other input: nothing in it can be reused
            shutil.rmtree(stale)
    work = work_root / key
    progress = _load_progress(work)
    work.mkdir(parents=True, exist_ok=True)
    with GroupEncoder.pool(tokenizer, dtype, workers) as encode:
        for split in ("train", "val"):
            _encode_pretrain(tasks[split], split, encode, work, dtype, shard_tokens, progress)
    manifest = {**_header(tokenizer, dtype, "pretrain"), "files": dict(progress["files"])}
    write_json(work / MANIFEST, manifest)
    (work / PROGRESS).unlink()
    _swap_in(work, out_dir)
    shutil.rmtree(work_root, ignore_errors=True)
    return manifest


def tokenize_sft(raw: Path, tokenizer, out_dir: Path) -> dict:
    """Render the SFT chats through the chat template into token + loss-mask arrays in out_dir; returns the manifest."""
    out_dir = Path(out_dir)
    missing = [r for r in chat.ROLES if f"<|{r}|>" not in tokenizer.special_ids]
    if missing and tokenizer.chat_template is None:  # a pretrained encoding has no role tokens to render chats with
        raise ValueError(f"tokenizer {tokenizer.name} has no chat role tokens ({', '.join(missing)}), so chats "
                         "cannot be rendered for SFT; use tokenizer.source: train")
    dtype = token_dtype(tokenizer.vocab_size)
    work = out_dir.with_name(out_dir.name + ".work.tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    files: dict = {}
    for split in ("train", "val"):
        _encode_sft(Path(raw), split, tokenizer, work, dtype, files)
    manifest = {**_header(tokenizer, dtype, "sft"), "files": files}
    write_json(work / MANIFEST, manifest)
    _swap_in(work, out_dir)
    return manifest


def _tasks(raw: Path, split: str) -> list[tuple[str, int]]:
    """(parquet file, row group) pairs of a split, in corpus order: the unit of work of one encoder process."""
    return [(str(f), g) for f in sources.split_files(raw, split, "download_pretrain")
            for g in range(pq.ParquetFile(f).num_row_groups)]


def _run_key(tasks: dict, raw: Path, tokenizer, shard_tokens: int, dtype: np.dtype) -> str:
    """What a finished shard depends on. Input files count by name, size and mtime: hashing them would cost as
    much reading as a rerun saves."""
    h = hashlib.sha256(json.dumps([FORMAT_VERSION, tokenizer.fingerprint, shard_tokens, dtype.name]).encode())
    for f in sorted({f for split in tasks.values() for f, _ in split}):
        st = os.stat(f)
        h.update(f"{Path(f).relative_to(raw)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    h.update((raw / "info.json").read_bytes())
    return h.hexdigest()[:16]


def _load_progress(work: Path) -> dict:
    path = work / PROGRESS
    if path.exists():
        progress = json.loads(path.read_text())
        if all((work / name).exists() for name in progress["files"]):
            return progress
    shutil.rmtree(work, ignore_errors=True)
    return {"files": {}, "splits": {}}


class GroupEncoder:
    """Row group -> one token array (each document opened by BOS). Built once per worker process."""

    def __init__(self, encoding, bos_id: int, dtype: np.dtype):
        self.encoding, self.bos_id, self.dtype = encoding, bos_id, np.dtype(dtype)
        self._file: tuple[str, pq.ParquetFile] | None = None

    def __call__(self, task: tuple[str, int]) -> np.ndarray:
        path, group = task
        if self._file is None or self._file[0] != path:
            self._file = (path, pq.ParquetFile(path))
        texts = self._file[1].read_row_group(group, columns=["text"]).column(0).to_pylist()
        encode = self.encoding.encode_ordinary
        docs = [encode(t) for t in texts]
        out = np.empty(sum(map(len, docs)) + len(docs), dtype=self.dtype)
        pos = 0
        for ids in docs:
            out[pos] = self.bos_id
            out[pos + 1:pos + 1 + len(ids)] = ids
            pos += 1 + len(ids)
        return out

    @classmethod
    def pool(cls, tokenizer, dtype: np.dtype, workers: int) -> _Pool:
        return _Pool(cls(tokenizer.tiktoken_encoding, tokenizer.bos_id, dtype), workers)


_WORKER: GroupEncoder | None = None


def _init_worker(encoder: GroupEncoder) -> None:
    global _WORKER
    _WORKER = encoder


def _run_task(task):
    return _WORKER(task)


class _Pool:
    """Ordered map of a GroupEncoder over tasks, in this process (workers=1) or on `workers` processes."""

    def __init__(self, encoder: GroupEncoder, workers: int):
        self.encoder, self.workers = encoder, workers
        self.pool = None

    def __enter__(self):
        if self.workers > 1:
            # spawn, not fork: the parent has pyarrow and tokenizer thread pools that a fork would copy mid-flight
            ctx = multiprocessing.get_context("spawn")
            self.pool = ctx.Pool(self.workers, initializer=_init_worker, initargs=(self.encoder,))
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def map(self, tasks: list, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        if self.pool is None:
            for i in range(start, len(tasks)):
                yield i, self.encoder(tasks[i])
            return
        # Pool.imap would queue every task at once and let finished results pile up; a window bounds memory
        pending: deque = deque()
        for i in range(start, len(tasks)):
            pending.append((i, self.pool.apply_async(_run_task, (tasks[i],))))
            if len(pending) >= self.workers * TASKS_IN_FLIGHT:
                j, res = pending.popleft()
                yield j, res.get()
        while pending:
            j, res = pending.popleft()
            yield j, res.get()


def _encode_pretrain(tasks: list, split: str, encode: _Pool, out: Path, dtype: np.dtype, shard_tokens: int,
                     progress: dict) -> None:
    """Stream the split's documents into shards of exactly `shard_tokens` tokens (the last one shorter).

    After each shard the progress file records the cursor: the task holding the next unwritten token and how many
    of that task's tokens are already in shards. A rerun starts there and produces identical shards."""
    state = progress["splits"].setdefault(split, {"shards": 0, "next_task": 0, "skip": 0, "done": False})
    if state["done"]:
        return
    buf: list[np.ndarray] = []
    spans: deque = deque()  # [task, tokens of it already in shards, tokens of it still in buf]
    last = state["next_task"] - 1

    def write(stream: np.ndarray, n: int) -> np.ndarray:
        piece, rest = stream[:n], stream[n:]
        _save(out / f"{split}_{state['shards']:05d}.npy", piece, progress["files"])
        state["shards"] += 1
        while n:
            take = min(n, spans[0][2])
            spans[0][1] += take
            spans[0][2] -= take
            n -= take
            if not spans[0][2]:
                spans.popleft()
        state["next_task"], state["skip"] = (spans[0][0], spans[0][1]) if spans else (last + 1, 0)
        write_json(out / PROGRESS, progress)
        return rest

    n_buf = 0
    skip = state["skip"]
    bar = tqdm(total=len(tasks), initial=state["next_task"], desc=f"tokenize {split}", unit="group", disable=None)
    for last, arr in encode.map(tasks, state["next_task"]):
        spans.append([last, skip, len(arr) - skip])
        if skip:
            arr, skip = arr[skip:], 0
        buf.append(arr)
        n_buf += len(arr)
        bar.update()
        if n_buf >= shard_tokens:
            stream = np.concatenate(buf)
            while len(stream) >= shard_tokens:
                stream = write(stream, shard_tokens)
            buf, n_buf = [stream], len(stream)
    bar.close()
    if n_buf:
        write(np.concatenate(buf), n_buf)
    state.update(done=True, next_task=len(tasks), skip=0)
    write_json(out / PROGRESS, progress)


def _encode_sft(raw: Path, split: str, tokenizer, out: Path, dtype, files: dict) -> None:
    # per-conversation arrays, not Python int lists: a tenth of the memory until the one concatenation
    tokens, masks, offsets = [], [], [0]
    for rec in sources.read_dataset(raw, split, "download_sft"):
        ids, mask = chat.render(rec["messages"], tokenizer)
        tokens.append(np.asarray(ids, dtype=dtype))
        masks.append(np.asarray(mask, dtype=np.uint8))
        offsets.append(offsets[-1] + len(ids))
    _save(out / f"{split}_tokens.npy", np.concatenate(tokens) if tokens else np.empty(0, dtype), files)
    _save(out / f"{split}_mask.npy", np.concatenate(masks) if masks else np.empty(0, np.uint8), files)
    _save(out / f"{split}_offsets.npy", np.asarray(offsets, dtype=np.int64), files)


# --------------------------------------------------------------------------------------------------------------------
# Reading


def load_manifest(token_dir: str | Path, tokenizer=None) -> dict:
    """The manifest, checked against the tokenizer that will interpret the ids."""
    path = Path(token_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `dvc repro tokenize tokenize_sft` first")
    manifest = json.loads(path.read_text())
    if tokenizer is not None and manifest["tokenizer_fingerprint"] != tokenizer.fingerprint:
        raise ValueError(f"{token_dir} was made by another tokenizer (fingerprint {manifest['tokenizer_fingerprint']}"
                         f", current {tokenizer.fingerprint}); run `dvc repro tokenize tokenize_sft` to re-encode")
    return manifest


def open_shard(token_dir: str | Path, name: str, manifest: dict, verify: bool = False) -> np.ndarray:
    """Memory-map one file of the manifest; its length (and, with verify, its checksum) must match."""
    path = Path(token_dir) / name
    entry = manifest["files"].get(name)
    if entry is None or not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `dvc repro tokenize tokenize_sft` to rebuild it")
    try:
        arr = np.load(path, mmap_mode="r")
    except ValueError as e:  # numpy refuses a file shorter than its header promises
        raise ValueError(f"{path} is truncated or corrupt ({e}); "
                         "run `dvc repro tokenize tokenize_sft` to rebuild it") from None
    if arr.shape[0] != entry["tokens"] or (verify and file_sha256(path) != entry["sha256"]):
        raise ValueError(f"{path} does not match manifest.json (truncated or modified: {arr.shape[0]} tokens, "
                         f"expected {entry['tokens']}); run `dvc repro tokenize tokenize_sft` to rebuild it")
    return arr


def pretrain_shards(token_dir: str | Path, split: str, manifest: dict) -> list[np.ndarray]:
    names = sorted(n for n in manifest["files"] if n.startswith(f"{split}_"))
    if not names:
        raise ValueError(f"{token_dir}: no {split} token shards; the corpus may be too small for a {split} split "
                         "(raise data.num_docs or data.val_fraction) — then run `dvc repro tokenize`")
    return [open_shard(token_dir, n, manifest, verify=True) for n in names]


def sft_arrays(token_dir: str | Path, split: str, manifest: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if manifest.get("kind") != "sft" or f"{split}_tokens.npy" not in manifest["files"]:
        raise FileNotFoundError(f"{token_dir} holds no SFT tokens; run `dvc repro tokenize_sft`")
    return tuple(open_shard(token_dir, f"{split}_{part}.npy", manifest, verify=True)
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
