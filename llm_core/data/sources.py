"""Text sources -> parquet shards: the built-in world, local files, a URL or the Hugging Face hub.

Three dataset kinds share the code path: `pretrain` (column `text`), `sft` (column `messages`, a list of
{role, content}) and `hellaswag` (the official jsonl schema). Every source yields plain records, one at a time:
nothing holds a whole corpus in memory. `write_dataset` splits them deterministically into train/val, writes parquet
shards bounded in rows and bytes (in small row groups, the unit of parallel tokenization) and an `info.json` summary.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import hashlib
import http.client
import json
import logging
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from llm_core.config import DataConfig, SourceConfig
from llm_core.data import synthetic
from llm_core.files import file_sha256, write_json

log = logging.getLogger(__name__)

KINDS = ("pretrain", "sft", "hellaswag")
DEFAULT_COLUMN = {"pretrain": "text", "sft": "messages", "hellaswag": None}
HELLASWAG_KEYS = ("ctx", "endings", "label")
# The official schema, kept whole so the items stay comparable with other HellaSwag evaluations.
HELLASWAG_SCHEMA = pa.schema([("ind", pa.int64()), ("activity_label", pa.string()), ("ctx_a", pa.string()),
                              ("ctx_b", pa.string()), ("ctx", pa.string()), ("endings", pa.list_(pa.string())),
                              ("label", pa.int64()), ("split", pa.string()), ("split_type", pa.string()),
                              ("source_id", pa.string())])
ROWS_PER_SHARD = 50_000
BYTES_PER_SHARD = 256 << 20  # a shard closes at whichever bound comes first
ROWS_PER_GROUP = 256  # row groups are what tokenize hands to one worker: small enough to spread, big enough to amortise
BYTES_PER_GROUP = 1 << 20
TXT_CHUNK_CHARS = 4000  # a plain text file is cut at paragraph boundaries into documents of about this size
READ_BLOCK = 1 << 20


class DataError(ValueError):
    """Bad input data; the message names the file and the fix."""


def _key(kind: str, name: str) -> str:
    return f"data.{name}" if kind == "pretrain" else f"data.{kind}.{name}"


def _count(stats: dict, what: str) -> None:
    stats[what] = stats.get(what, 0) + 1


# --------------------------------------------------------------------------------------------------------------------
# Sources


def iter_records(kind: str, src: SourceConfig, seed: int, stats: dict) -> Iterator[dict]:
    """Records of one dataset kind from the configured source, honouring max_docs / max_bytes."""
    if src.source == "synthetic":
        records = _synthetic(kind, src, seed, stats)
    elif src.source == "local":
        records = _local(kind, src, stats)
    elif src.source == "url":
        records = _url(kind, src, stats)
    elif src.source == "hf":
        records = _hf(kind, src, stats)
    else:  # validated in config
        raise AssertionError(src.source)
    n_bytes = 0
    for i, rec in enumerate(records):
        if src.max_docs and i >= src.max_docs:
            break
        n_bytes += _record_bytes(kind, rec)
        yield rec
        if src.max_bytes and n_bytes >= src.max_bytes:
            break


def _synthetic(kind: str, src: SourceConfig, seed: int, stats: dict) -> Iterator[dict]:
    if kind == "pretrain":
        texts, bits_per_byte = synthetic.generate_corpus(seed, src.num_docs)
        stats["entropy_floor_bpb"] = bits_per_byte
        yield from ({"text": t} for t in texts)
    elif kind == "sft":
        yield from ({"messages": m} for m in synthetic.generate_chats(seed + 1, src.num_docs))
    else:
        for item in synthetic.generate_hellaswag(seed + 2, src.num_docs):
            yield _normalise("hellaswag", item, None, "synthetic", stats)


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
    # DVC cannot track files named in params.yaml; their size and mtime in info.json make a change visible there
    stats["inputs"] = [{"path": str(p), "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in files]
    for path in files:
        yield from read_file(kind, path, src, stats)


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
                            f"set {_key(kind, 'column')} to the right one")
        for batch in pf.iter_batches(batch_size=ROWS_PER_GROUP):
            for row in batch.to_pylist():
                rec = _normalise(kind, row, column, path, stats)
                if rec is not None:
                    yield rec
        return
    lines = _lines(path, src.encoding, kind)
    if suffix in (".jsonl", ".json"):
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                _count(stats, "skipped_malformed")
                log.warning("%s:%d: skipped malformed jsonl line (%s)", path, lineno, e.msg)
                continue
            rec = _normalise(kind, row, column, path, stats, lineno)
            if rec is not None:
                yield rec
        return
    if kind != "pretrain":
        raise DataError(f"{path}: {kind} data must be .jsonl or .parquet (got {path.suffix or 'no extension'})")
    empty = True
    for chunk in chunk_lines(lines):
        empty = False
        yield {"text": chunk}
    if empty:
        _count(stats, "skipped_empty")
        log.warning("%s: empty file skipped", path)


def decoded_blocks(path: Path, encoding: str, kind: str = "pretrain") -> Iterator[str]:
    """The file's text in blocks of about 1 MiB; undecodable bytes stop it with the file, the offset and the key."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0  # bytes of the (decompressed) file consumed before this block
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        while True:
            block = f.read(READ_BLOCK)
            pending = decoder.getstate()[0]  # bytes of a character cut by the previous block
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                at = offset - len(pending) + e.start
                raise DataError(f"{path}: byte {at} (0x{e.object[e.start]:02x}) is not valid {encoding}; set "
                                f"{_key(kind, 'encoding')} to the file's encoding (e.g. cp1252 or latin-1) in "
                                "params.yaml") from None
            if text:
                yield text
            if not block:
                return
            offset += len(block)


def _lines(path: Path, encoding: str, kind: str) -> Iterator[str]:
    carry = ""
    for text in decoded_blocks(path, encoding, kind):
        parts = (carry + text).split("\n")
        carry = parts.pop()
        yield from parts
    if carry:
        yield carry


def decode(path: Path, encoding: str, kind: str = "pretrain") -> str:
    return "".join(decoded_blocks(path, encoding, kind))


def chunk_lines(lines: Iterable[str], max_chars: int = TXT_CHUNK_CHARS) -> Iterator[str]:
    """Cut text, line by line, at blank lines into documents of at most ~max_chars (a paragraph is never split)."""
    doc: list[str] = []
    para: list[str] = []
    size = 0

    def end_paragraph():
        nonlocal size
        if not para:
            return None
        text = "\n".join(para).strip()
        para.clear()
        out = None
        if doc and size + len(text) > max_chars:
            out = "\n\n".join(doc)
            doc.clear()
            size = 0
        if text:
            doc.append(text)
            size += len(text) + 2
        return out

    for line in lines:
        line = line.rstrip("\r")
        if line.strip():
            para.append(line)
        elif (out := end_paragraph()) is not None:
            yield out
    if (out := end_paragraph()) is not None:
        yield out
    if doc:
        yield "\n\n".join(doc)


def chunk_text(text: str, max_chars: int = TXT_CHUNK_CHARS) -> Iterator[str]:
    return chunk_lines(text.split("\n"), max_chars)


def _normalise(kind: str, row: dict, column: str | None, path, stats: dict, lineno: int | None = None):
    where = f"{path}:{lineno}" if lineno else str(path)
    if not isinstance(row, dict):
        _count(stats, "skipped_malformed")
        log.warning("%s: skipped a record that is not an object", where)
        return None
    if kind == "hellaswag":
        return _hellaswag_item(row, where, stats)
    if column not in row:
        raise DataError(f"{where}: record has no field {column!r} (fields: {sorted(row)}); set "
                        f"{_key(kind, 'column')}")
    value = row[column]
    if kind == "pretrain":
        if not isinstance(value, str) or not value.strip():
            _count(stats, "skipped_empty")
            return None
        return {"text": value}
    try:
        if isinstance(value, str):
            value = json.loads(value)
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    except (TypeError, KeyError, json.JSONDecodeError):
        _count(stats, "skipped_malformed")
        log.warning("%s: skipped a conversation that is not a list of {role, content}", where)
        return None
    if not msgs:
        _count(stats, "skipped_empty")
        return None
    return {"messages": msgs}


def _hellaswag_item(row: dict, where: str, stats: dict) -> dict | None:
    missing = [k for k in HELLASWAG_KEYS if k not in row]
    try:
        endings = [str(e) for e in row["endings"]] if not missing else []
        label = int(row["label"]) if not missing else -1  # the hub's copy stores labels as strings
    except (TypeError, ValueError):
        endings, label = [], -1
    if missing or len(endings) < 2 or not 0 <= label < len(endings):
        _count(stats, "skipped_malformed")
        log.warning("%s: skipped a HellaSwag item without %s", where, missing or "a valid label and endings")
        return None
    ctx = str(row["ctx"])
    ind = row.get("ind")
    return {"ind": int(ind) if isinstance(ind, (int, str)) and str(ind).isdigit() else -1,
            "activity_label": str(row.get("activity_label") or ""), "ctx_a": str(row.get("ctx_a") or ctx),
            "ctx_b": str(row.get("ctx_b") or ""), "ctx": ctx, "endings": endings, "label": label,
            "split": str(row.get("split") or ""), "split_type": str(row.get("split_type") or ""),
            "source_id": str(row.get("source_id") or "")}


def _url(kind: str, src: SourceConfig, stats: dict) -> Iterator[dict]:
    cache = Path("data/raw/.downloads")
    name = Path(urllib.request.urlparse(src.url).path).name or "download"
    target = cache / f"{hashlib.sha256(src.url.encode()).hexdigest()[:12]}-{name}"
    fetch_url(src.url, target, src.sha256, key=_key(kind, "url"))
    yield from read_file(kind, target, src, stats)


class _Interrupted(Exception):
    pass


def fetch_url(url: str, target: Path, sha256: str = "", chunk: int = 1 << 20, retries: int = 5,
              key: str = "data.url") -> Path:
    """Download with resume: a `.part` file left by an interrupted transfer continues with an HTTP Range request,
    both across runs and, up to `retries` times, within one. With `sha256`, a mismatch removes the download."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and (not sha256 or file_sha256(target) == sha256):
        return target
    part = target.with_name(target.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, chunk, key)
            break
        except _Interrupted as e:
            have = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise DataError(f"download of {url} was interrupted {retries + 1} times ({e}); {have:,} bytes are "
                                f"kept in {part}: rerun to resume") from None
            log.warning("download of %s interrupted at %d bytes (%s); resuming", url, have, e)
    if sha256:
        got = file_sha256(part)
        if got != sha256.lower():
            part.unlink()
            raise DataError(f"{url}: sha256 {got} does not match {key.rsplit('.', 1)[0]}.sha256 {sha256}; the "
                            "download was removed, rerun to fetch it again or fix the checksum")
    os.replace(part, target)
    return target


def _transfer(url: str, part: Path, chunk: int, key: str) -> None:
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the part file is complete
            return
        raise DataError(f"download of {url} failed: HTTP {e.code}; check {key}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"cannot reach {url} ({getattr(e, 'reason', e)}): data.source=url needs a network; use "
                        "data.source=synthetic or local (download the file yourself and list it in data.paths)"
                        ) from None
    with resp:
        # 206 continues the part file; a server that ignores Range (200) or answers another range sends it all again
        resumed = have and resp.status == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        if not resumed:
            have = 0
        total = resp.headers.get("Content-Length")
        got = 0
        try:
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                    total=have + int(total) if total else None, initial=have, unit="B", unit_scale=True,
                    desc=f"download {part.name[:-5]}", disable=None) as bar:
                while block := resp.read(chunk):
                    f.write(block)
                    got += len(block)
                    bar.update(len(block))
        except (http.client.IncompleteRead, ConnectionError, TimeoutError, urllib.error.URLError) as e:
            raise _Interrupted(type(e).__name__) from None
        # http.client ends a body cut short by a closed connection as if it were complete: compare with the length
        if total and got < int(total):
            raise _Interrupted(f"connection closed after {got} of {total} bytes")



def _hf(kind: str, src: SourceConfig, stats: dict) -> Iterator[dict]:
    """Stream a hub dataset, or a local dataset folder (save_to_disk output, or a folder of parquet / jsonl)."""
    import datasets  # heavy import: only for this source

    column = src.column or DEFAULT_COLUMN[kind]
    local = Path(src.hf_path)
    try:
        if (local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists():
            ds = datasets.load_from_disk(src.hf_path)
            if isinstance(ds, datasets.DatasetDict):
                if src.hf_split not in ds:
                    raise DataError(f"{src.hf_path} has no split {src.hf_split!r} (splits: {list(ds)}); set "
                                    f"{_key(kind, 'hf_split')}")
                ds = ds[src.hf_split]
        else:
            ds = datasets.load_dataset(src.hf_path, src.hf_name or None, split=src.hf_split, streaming=True)
        rows = iter(ds)
    except DataError:
        raise
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as e:
        raise DataError(f"cannot load {src.hf_path!r} from the Hugging Face hub ({type(e).__name__}: {e}): "
                        "data.source=hf needs a network (or an existing local dataset folder as hf_path); use "
                        "data.source=synthetic or local") from None
    except ValueError as e:  # an unknown split or config
        raise DataError(f"cannot load {src.hf_path!r}: {e}; check {_key(kind, 'hf_name')} and "
                        f"{_key(kind, 'hf_split')}") from None
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except (ConnectionError, OSError) as e:
            raise DataError(f"streaming {src.hf_path!r} failed ({type(e).__name__}: {e}): data.source=hf needs a "
                            "network; rerun, or use data.source=synthetic or local") from None
        rec = _normalise(kind, row, column, src.hf_path, stats)
        if rec is not None:
            yield rec


def _record_bytes(kind: str, rec: dict) -> int:
    if kind == "pretrain":
        return len(rec["text"].encode())
    if kind == "sft":
        return sum(len(m["content"].encode()) for m in rec["messages"])
    return len(rec["ctx"].encode()) + sum(len(e.encode()) for e in rec["endings"])


# --------------------------------------------------------------------------------------------------------------------
# Writing


def is_val(index: int, seed: int, val_fraction: float) -> bool:
    """Deterministic split from the record's position and the seed: stable across reruns and machines."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def write_dataset(kind: str, data: DataConfig, out_dir: str | Path, rows_per_shard: int = ROWS_PER_SHARD,
                  bytes_per_shard: int = BYTES_PER_SHARD) -> dict:
    """Read the configured source for `kind` and write parquet shards to out_dir/{train,val}/; returns info."""
    assert kind in KINDS
    src = data if kind == "pretrain" else getattr(data, kind)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    stats: dict = {}
    counts = {"train": 0, "val": 0}
    n_bytes = 0
    writers = {s: ShardWriter(tmp / s, kind, rows_per_shard, bytes_per_shard) for s in counts}
    try:
        # HellaSwag is an eval set: every item is evaluation data, no split
        for i, rec in enumerate(tqdm(iter_records(kind, src, data.seed, stats), desc=f"download {kind}",
                                     unit="doc", disable=None)):
            split = "val" if kind == "hellaswag" or is_val(i, data.seed, data.val_fraction) else "train"
            size = _record_bytes(kind, rec)
            writers[split].add(rec, size)
            counts[split] += 1
            n_bytes += size
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if counts["train"] + counts["val"] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"the {kind} corpus is empty (source={src.source}); check the files / source in params.yaml "
                        "(data" + ("" if kind == "pretrain" else f".{kind}") + ".*)")
    if kind != "hellaswag" and counts["train"] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"the {kind} corpus has only {counts['val']} document(s), all of them held out for "
                        "validation; add more data or lower data.val_fraction")
    info = {"kind": kind, "source": src.source, "docs_train": counts["train"], "docs_val": counts["val"],
            "bytes": n_bytes, **stats}
    write_json(tmp / "info.json", info)
    # swap in only once complete, so a failed run leaves the previous output intact
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return info


class ShardWriter:
    """Parquet shards `part-NNNNN.parquet` of at most `rows_per_shard` rows / ~`bytes_per_shard` bytes of text,
    written one row group at a time so that only one row group is ever held in memory."""

    def __init__(self, directory: Path, kind: str, rows_per_shard: int = ROWS_PER_SHARD,
                 bytes_per_shard: int = BYTES_PER_SHARD):
        self.dir, self.kind = directory, kind
        self.rows_per_shard, self.bytes_per_shard = rows_per_shard, bytes_per_shard
        self.schema = HELLASWAG_SCHEMA if kind == "hellaswag" else None
        self.rows: list[dict] = []
        self.group_bytes = 0
        self.shard_rows = self.shard_bytes = 0
        self.n_shards = 0
        self.writer: pq.ParquetWriter | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def add(self, rec: dict, size: int) -> None:
        self.rows.append(rec)
        self.group_bytes += size
        self.shard_rows += 1
        self.shard_bytes += size
        if len(self.rows) >= ROWS_PER_GROUP or self.group_bytes >= BYTES_PER_GROUP:
            self._write_group()
        if self.shard_rows >= self.rows_per_shard or self.shard_bytes >= self.bytes_per_shard:
            self._close_shard()

    def _write_group(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        if self.writer is None:
            self.schema = table.schema  # later groups must match the first one
            self.writer = pq.ParquetWriter(self.dir / f"part-{self.n_shards:05d}.parquet", table.schema)
        self.writer.write_table(table)
        self.rows, self.group_bytes = [], 0

    def _close_shard(self) -> None:
        self._write_group()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.n_shards += 1
        self.shard_rows = self.shard_bytes = 0

    def close(self) -> None:
        self._close_shard()


def split_files(directory: str | Path, split: str, stage: str) -> list[Path]:
    """The parquet shards of a written dataset split, in order; clear error when the download stage has not run."""
    directory = Path(directory)
    if not (directory / "info.json").exists():
        raise FileNotFoundError(f"{directory} has no downloaded data; run `dvc repro {stage}` first")
    return sorted((directory / split).glob("part-*.parquet"))


def read_dataset(directory: str | Path, split: str, stage: str, columns: list[str] | None = None) -> Iterator[dict]:
    """Records of a written dataset split, in order, streamed one row group at a time."""
    for f in split_files(directory, split, stage):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=ROWS_PER_GROUP, columns=columns):
            yield from batch.to_pylist()


def dataset_info(directory: str | Path) -> dict:
    return json.loads((Path(directory) / "info.json").read_text())


def iter_texts(directory: str | Path, split: str, stage: str = "download_pretrain") -> Iterator[str]:
    for f in split_files(directory, split, stage):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=ROWS_PER_GROUP, columns=["text"]):
            yield from batch.column(0).to_pylist()


def take_bytes(texts: Iterable[str], budget: int) -> Iterator[str]:
    """Texts until `budget` UTF-8 bytes have been yielded (the text that crosses the budget is included)."""
    seen = 0
    for text in texts:
        if seen >= budget:
            return
        seen += len(text.encode())
        yield text
