"""A dataset on disk: parquet shards under {train,val}/ plus info.json, written from a source's records and read back.

`write_dataset` splits the records deterministically into train / val, writes shards bounded in rows and bytes (in
small row groups, the unit of parallel tokenization) into a temporary folder and swaps it in whole once complete, so
a failure leaves the previous dataset as it was. The readers stream one row group at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from llm_core.config import DataConfig
from llm_core.data.sources.records import iter_records
from llm_core.data.sources.schema import HELLASWAG_KINDS, HELLASWAG_SCHEMA, KINDS, DataError, record_bytes
from llm_core.files import write_json

ROWS_PER_SHARD = 50_000
BYTES_PER_SHARD = 256 << 20  # a shard closes at whichever bound comes first
ROWS_PER_GROUP = 256  # row groups are what tokenize hands to one worker: small enough to spread, big enough to amortise
BYTES_PER_GROUP = 1 << 20


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
        # HellaSwag items are evaluation data: all of them go to val, no split
        for i, rec in enumerate(tqdm(iter_records(kind, src, data.seed, stats), desc=f"download {kind}",
                                     unit="doc", disable=None)):
            split = "val" if kind in HELLASWAG_KINDS or is_val(i, data.seed, data.val_fraction) else "train"
            size = record_bytes(kind, rec)
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
    if kind not in HELLASWAG_KINDS and counts["train"] == 0:
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
        self.schema = HELLASWAG_SCHEMA if kind in HELLASWAG_KINDS else None
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


# --------------------------------------------------------------------------------------------------------------------
# Reading a written dataset


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
