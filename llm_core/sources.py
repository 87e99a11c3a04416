"""Text sources -> parquet shards: the built-in world, local files, a URL or the Hugging Face hub.

Three dataset kinds share the code path: `pretrain` (column `text`), `sft` (column `messages`, a list of
{role, content}) and `hellaswag` (the official jsonl schema). Every source yields plain records; `write_dataset`
splits them deterministically into train/val, writes bounded parquet shards and an `info.json` summary.
"""

from __future__ import annotations

import glob
import hashlib
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

from llm_core import synthetic
from llm_core.config import DataConfig, SourceConfig

log = logging.getLogger(__name__)

KINDS = ("pretrain", "sft", "hellaswag")
DEFAULT_COLUMN = {"pretrain": "text", "sft": "messages", "hellaswag": None}
HELLASWAG_KEYS = ("ctx", "endings", "label")
ROWS_PER_SHARD = 50_000
TXT_CHUNK_CHARS = 4000  # a plain text file is cut at paragraph boundaries into documents of about this size


class DataError(ValueError):
    """Bad input data; the message names the file and the fix."""


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
        texts, bits_per_byte = synthetic.generate_stories(seed, src.num_docs)
        stats["entropy_floor_bpb"] = bits_per_byte
        yield from ({"text": t} for t in texts)
    elif kind == "sft":
        yield from ({"messages": m} for m in synthetic.generate_chats(seed + 1, src.num_docs))
    else:
        yield from synthetic.generate_hellaswag(seed + 2, src.num_docs)


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
    for path in expand_paths(src.paths):
        yield from read_file(kind, path, src, stats)


def read_file(kind: str, path: Path, src: SourceConfig, stats: dict) -> Iterator[dict]:
    """One txt / jsonl / parquet file as records; malformed jsonl lines are skipped and counted."""
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    column = src.column or DEFAULT_COLUMN[kind]
    if suffix in (".parquet",):
        table = pq.read_table(path)
        needed = [column] if column else list(HELLASWAG_KEYS)
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            raise DataError(f"{path}: parquet file has no column {missing[0]!r} (columns: {table.column_names}); "
                            f"set data{'' if kind == 'pretrain' else '.' + kind}.column to the right one")
        for row in table.to_pylist():
            rec = _normalise(kind, row, column, path, stats)
            if rec is not None:
                yield rec
        return
    text = decode(path, src.encoding, kind)
    if suffix in (".jsonl", ".json"):
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                stats["skipped_malformed"] = stats.get("skipped_malformed", 0) + 1
                log.warning("%s:%d: skipped malformed jsonl line (%s)", path, lineno, e.msg)
                continue
            rec = _normalise(kind, row, column, path, stats, lineno)
            if rec is not None:
                yield rec
        return
    if kind != "pretrain":
        raise DataError(f"{path}: {kind} data must be .jsonl or .parquet (got {path.suffix or 'no extension'})")
    if not text.strip():
        stats["skipped_empty"] = stats.get("skipped_empty", 0) + 1
        log.warning("%s: empty file skipped", path)
        return
    yield from ({"text": chunk} for chunk in chunk_text(text))


def decode(path: Path, encoding: str, kind: str = "pretrain") -> str:
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        key = "data.encoding" if kind == "pretrain" else f"data.{kind}.encoding"
        raise DataError(f"{path}: byte {e.start} (0x{data[e.start]:02x}) is not valid {encoding}; set {key} to the "
                        "file's encoding (e.g. cp1252 or latin-1) in params.yaml") from None


def chunk_text(text: str, max_chars: int = TXT_CHUNK_CHARS) -> Iterator[str]:
    """Cut a long text at blank lines into documents of at most ~max_chars (a paragraph is never split)."""
    text = text.replace("\r\n", "\n")
    buf: list[str] = []
    size = 0
    for para in text.split("\n\n"):
        para = para.strip()
        if not para:
            continue
        if buf and size + len(para) > max_chars:
            yield "\n\n".join(buf)
            buf, size = [], 0
        buf.append(para)
        size += len(para) + 2
    if buf:
        yield "\n\n".join(buf)


def _normalise(kind: str, row: dict, column: str | None, path, stats: dict, lineno: int | None = None):
    where = f"{path}:{lineno}" if lineno else str(path)
    if not isinstance(row, dict):
        stats["skipped_malformed"] = stats.get("skipped_malformed", 0) + 1
        log.warning("%s: skipped a record that is not an object", where)
        return None
    if kind == "hellaswag":
        missing = [k for k in HELLASWAG_KEYS if k not in row]
        if missing:
            stats["skipped_malformed"] = stats.get("skipped_malformed", 0) + 1
            log.warning("%s: skipped a HellaSwag item without %s", where, missing)
            return None
        endings = list(row["endings"])
        label = int(row["label"])
        if len(endings) < 2 or not 0 <= label < len(endings):
            stats["skipped_malformed"] = stats.get("skipped_malformed", 0) + 1
            return None
        return {"ctx": str(row["ctx"]), "endings": [str(e) for e in endings], "label": label,
                "activity_label": str(row.get("activity_label", ""))}
    if column not in row:
        raise DataError(f"{where}: record has no field {column!r} (fields: {sorted(row)}); set "
                        f"data{'' if kind == 'pretrain' else '.' + kind}.column")
    value = row[column]
    if kind == "pretrain":
        if not isinstance(value, str) or not value.strip():
            stats["skipped_empty"] = stats.get("skipped_empty", 0) + 1
            return None
        return {"text": value}
    if isinstance(value, str):
        value = json.loads(value)
    msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    if not msgs:
        stats["skipped_empty"] = stats.get("skipped_empty", 0) + 1
        return None
    return {"messages": msgs}


def _url(kind: str, src: SourceConfig, stats: dict) -> Iterator[dict]:
    cache = Path("data/raw/.downloads")
    name = Path(urllib.request.urlparse(src.url).path).name or "download"
    target = cache / f"{hashlib.sha256(src.url.encode()).hexdigest()[:12]}-{name}"
    fetch_url(src.url, target, src.sha256)
    yield from read_file(kind, target, src, stats)


def fetch_url(url: str, target: Path, sha256: str = "", chunk: int = 1 << 20) -> Path:
    """Download with resume: a `.part` file left by an interrupted transfer continues with an HTTP Range request."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and (not sha256 or _sha256(target) == sha256):
        return target
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the part file is complete
            resp = None
        else:
            raise DataError(f"download of {url} failed: HTTP {e.code}; check data.url") from None
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"cannot reach {url} ({getattr(e, 'reason', e)}): data.source=url needs a network; use "
                        "data.source=synthetic or local (download the file yourself and list it in data.paths)") from None
    if resp is not None:
        with resp:
            mode = "ab" if have and resp.status == 206 else "wb"  # a server that ignores Range sends it all again
            total = resp.headers.get("Content-Length")
            with open(part, mode) as f, tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                                             desc=f"download {target.name}", disable=None) as bar:
                while block := resp.read(chunk):
                    f.write(block)
                    bar.update(len(block))
    if sha256:
        got = _sha256(part)
        if got != sha256:
            part.unlink()
            raise DataError(f"{url}: sha256 {got} does not match data.sha256 {sha256}; the partial file was removed, "
                            "rerun to download again or fix the checksum")
    os.replace(part, target)
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _hf(kind: str, src: SourceConfig, stats: dict) -> Iterator[dict]:
    import datasets  # heavy import: only for this source

    column = src.column or DEFAULT_COLUMN[kind]
    try:
        if Path(src.hf_path).exists():  # a dataset folder saved with save_to_disk or files on disk
            ds = (datasets.load_from_disk(src.hf_path) if (Path(src.hf_path) / "dataset_info.json").exists()
                  or (Path(src.hf_path) / "dataset_dict.json").exists() else
                  datasets.load_dataset(src.hf_path, src.hf_name or None, split=src.hf_split, streaming=True))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[src.hf_split]
        else:
            ds = datasets.load_dataset(src.hf_path, src.hf_name or None, split=src.hf_split, streaming=True)
        for row in ds:
            rec = _normalise(kind, row, column, src.hf_path, stats)
            if rec is not None:
                yield rec
    except (ConnectionError, OSError) as e:
        raise DataError(f"cannot load {src.hf_path!r} from the Hugging Face hub ({type(e).__name__}): data.source=hf "
                        "needs a network; use data.source=synthetic or local") from None


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


def write_dataset(kind: str, data: DataConfig, out_dir: str | Path) -> dict:
    """Read the configured source for `kind` and write parquet shards to out_dir/{train,val}/; returns info."""
    assert kind in KINDS
    src = data if kind == "pretrain" else getattr(data, kind)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    stats: dict = {}
    counts = {"train": 0, "val": 0}
    n_bytes = 0
    writers = {s: _ShardWriter(tmp / s, kind) for s in counts}
    # HellaSwag is an eval set: every item is evaluation data, no split
    for i, rec in enumerate(tqdm(iter_records(kind, src, data.seed, stats), desc=f"download {kind}", unit="doc",
                                 disable=None)):
        split = "val" if kind == "hellaswag" or is_val(i, data.seed, data.val_fraction) else "train"
        writers[split].add(rec)
        counts[split] += 1
        n_bytes += _record_bytes(kind, rec)
    for w in writers.values():
        w.close()
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
    (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    # swap in only once complete, so a failed run leaves the previous output intact
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return info


class _ShardWriter:
    def __init__(self, directory: Path, kind: str, rows_per_shard: int = ROWS_PER_SHARD):
        self.dir, self.kind, self.rows_per_shard = directory, kind, rows_per_shard
        self.rows: list[dict] = []
        self.n_shards = 0
        directory.mkdir(parents=True, exist_ok=True)

    def add(self, rec: dict) -> None:
        self.rows.append(rec)
        if len(self.rows) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows)
        pq.write_table(table, self.dir / f"part-{self.n_shards:05d}.parquet")
        self.n_shards += 1
        self.rows = []

    def close(self) -> None:
        self.flush()


def read_dataset(directory: str | Path, split: str, stage: str) -> Iterator[dict]:
    """Records of a written dataset split, in order; clear error when the download stage has not run."""
    directory = Path(directory)
    if not (directory / "info.json").exists():
        raise FileNotFoundError(f"{directory} has no downloaded data; run `dvc repro {stage}` first")
    for f in sorted((directory / split).glob("part-*.parquet")):
        yield from pq.read_table(f).to_pylist()


def dataset_info(directory: str | Path) -> dict:
    return json.loads((Path(directory) / "info.json").read_text())


def iter_texts(directory: str | Path, split: str, stage: str = "download_pretrain") -> Iterable[str]:
    return (r["text"] for r in read_dataset(directory, split, stage))


def take_bytes(texts: Iterable[str], budget: int) -> Iterator[str]:
    """Texts until `budget` UTF-8 bytes have been yielded (the text that crosses the budget is included)."""
    seen = 0
    for text in texts:
        if seen >= budget:
            return
        seen += len(text.encode())
        yield text
