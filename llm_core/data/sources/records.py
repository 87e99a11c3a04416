"""The records of one dataset, read from its configured source: the built-in world, local files, a URL or the Hugging
Face hub. Every source yields records one at a time (nothing holds a corpus in memory) and notes in `stats` what it
read (the inputs' checksums, the URL's sha256, the hub revision), which ends up in the dataset's info.json."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from llm_core.config import SourceConfig
from llm_core.data import synthetic, synthetic_chat
from llm_core.data.sources import text
from llm_core.data.sources.fetch import fetch_url
from llm_core.data.sources.hub import hub_rows
from llm_core.data.sources.schema import (DEFAULT_COLUMN, HELLASWAG_KEYS, DataError, count, key, normalise,
                                          record_bytes)
from llm_core.files import describe_files, file_sha256

log = logging.getLogger(__name__)

PARQUET_BATCH = 256  # rows decoded at a time from a parquet input
DOWNLOADS = Path("data/raw/.downloads")  # url sources are cached here, outside every stage's output


def iter_records(kind: str, src: SourceConfig, seed: int, stats: dict) -> Iterator[dict]:
    """Records of one dataset kind from the configured source, honouring max_docs / max_bytes."""
    if src.source == "synthetic":
        records = _synthetic(kind, src, seed, stats)
    elif src.source == "local":
        records = _local(kind, src, stats)
    elif src.source == "url":
        records = _url(kind, src, stats)
    elif src.source == "hf":
        column = src.column or DEFAULT_COLUMN[kind]
        records = (rec for row in hub_rows(kind, src, stats)
                   if (rec := normalise(kind, row, column, src.hf_path, stats)) is not None)
    else:  # validated in config
        raise AssertionError(src.source)
    n_bytes = 0
    for i, rec in enumerate(records):
        if src.max_docs and i >= src.max_docs:
            break
        n_bytes += record_bytes(kind, rec)
        yield rec
        if src.max_bytes and n_bytes >= src.max_bytes:
            break


def _synthetic(kind: str, src: SourceConfig, seed: int, stats: dict) -> Iterator[dict]:
    if kind == "pretrain":
        texts, bits_per_byte = synthetic.generate_corpus(seed, src.num_docs, getattr(src, "notes_every", 0))
        stats["entropy_floor_bpb"] = bits_per_byte
        yield from ({"text": t} for t in texts)
    elif kind == "sft":
        yield from ({"messages": m} for m in synthetic_chat.generate_chats(seed + 1, src.num_docs))
    else:
        # the probe set draws from the same items as the eval set: its first num_docs items
        for item in synthetic.generate_hellaswag(seed + 2, src.num_docs):
            yield normalise(kind, item, None, "synthetic", stats)


def expand_paths(patterns: list[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise FileNotFoundError(f"data: no file matches {pattern!r}; fix the path in params.yaml (data.paths)")
        for m in matches:
            p = Path(m)
            files.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    return files


def _local(kind: str, src: SourceConfig, stats: dict) -> Iterator[dict]:
    files = expand_paths(src.paths)
    # DVC cannot track files named in params.yaml; their checksums in info.json make a change visible in dvc.lock
    stats["inputs"] = describe_files(files)
    for path in files:
        yield from read_file(kind, path, src, stats)


def _url(kind: str, src: SourceConfig, stats: dict) -> Iterator[dict]:
    name = Path(urllib.request.urlparse(src.url).path).name or "download"
    target = DOWNLOADS / f"{hashlib.sha256(src.url.encode()).hexdigest()[:12]}-{name}"
    fetch_url(src.url, target, src.sha256, key=key(kind, "url"))
    stats["url"] = src.url
    stats["sha256"] = src.sha256.lower() or file_sha256(target)
    if not src.sha256:
        # recorded in info.json, so dvc.lock pins the bytes read; said once, here, so the user can pin the source
        print(f"download: {key(kind, 'url')} has no sha256; read {stats['sha256']} (recorded in info.json). Set "
              f"{key(kind, 'sha256')}: {stats['sha256']} to refuse other bytes later", flush=True)
    yield from read_file(kind, target, src, stats)


def _suffix(path: Path) -> str:
    return path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix


def read_file(kind: str, path: Path, src: SourceConfig, stats: dict) -> Iterator[dict]:
    """One txt / jsonl / parquet file (optionally .gz) as records, streamed; malformed jsonl lines are counted."""
    suffix = _suffix(path)
    column = src.column or DEFAULT_COLUMN[kind]
    if suffix == ".parquet":
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        needed = [column] if column else list(HELLASWAG_KEYS)
        missing = [c for c in needed if c not in names]
        if missing:
            raise DataError(f"{path}: parquet file has no column {missing[0]!r} (columns: {names}); "
                            f"set {key(kind, 'column')} to the right one")
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH):
            for row in batch.to_pylist():
                rec = normalise(kind, row, column, path, stats)
                if rec is not None:
                    yield rec
        return
    lines = text.lines(path, src.encoding, kind)
    if suffix in (".jsonl", ".json"):
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                count(stats, "skipped_malformed")
                log.warning("%s:%d: skipped malformed jsonl line (%s)", path, lineno, e.msg)
                continue
            rec = normalise(kind, row, column, path, stats, lineno)
            if rec is not None:
                yield rec
        return
    if kind != "pretrain":
        raise DataError(f"{path}: {kind} data must be .jsonl or .parquet (got {path.suffix or 'no extension'})")
    empty = True
    for chunk in text.chunk_lines(lines):
        empty = False
        yield {"text": chunk}
    if empty:
        count(stats, "skipped_empty")
        log.warning("%s: empty file skipped", path)
