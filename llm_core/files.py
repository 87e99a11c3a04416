"""Atomic writes and checksums: the one place that knows how to replace a file so that a reader (or a killed
writer) never sees half of it."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` in one rename: a crash leaves the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj, round_floats: int | None = None) -> None:
    """Indented JSON, atomically. `round_floats` rounds top-level floats (metrics files people read and diff)."""
    if round_floats is not None and isinstance(obj, dict):
        obj = {k: (round(v, round_floats) if isinstance(v, float) else v) for k, v in obj.items()}
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_metrics(path: str | Path, metrics: dict) -> None:
    """A flat metrics file that `dvc metrics diff` reads (floats rounded to 6 digits)."""
    write_json(path, metrics, round_floats=6)


def file_sha256(path: str | Path) -> str:
    """Checksum of a file read in blocks (downloads and token shards can be larger than memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a power cut right after it keeps the new name)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
