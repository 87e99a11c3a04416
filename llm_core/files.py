"""Atomic writes and checksums: the one place that knows how to replace a file so that a reader (or a killed
writer) never sees half of it, with the permissions any other file written by the process would get."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` in one rename: a crash leaves the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600 whatever the umask: a model folder or an info file would be unreadable by the
        # group, other users or a web server. Give it the mode a plain open() gets (0644 under umask 022).
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """A folder built beside `out` (`.<name>.tmp`) and swapped in when the block ends without an error: a failure
    leaves the previous `out` as it was and no half-built folder behind."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask can only set it: the set-and-restore dance would
    briefly change it for every thread of the process)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(path: str | Path) -> None:
    """Give a file written by a library that creates it private (safetensors' save_file makes 0600) the mode a plain
    open() gives: other users, a shared group folder or a web server can read a trained model."""
    os.chmod(path, 0o666 & ~current_umask())


def write_json(path: str | Path, obj, round_floats: int | None = None) -> None:
    """Indented JSON, atomically. `round_floats` rounds top-level floats (metrics files people read and diff)."""
    if round_floats is not None and isinstance(obj, dict):
        obj = {k: (round(v, round_floats) if isinstance(v, float) else v) for k, v in obj.items()}
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_metrics(path: str | Path, metrics: dict) -> None:
    """A flat metrics file that `dvc metrics diff` reads (floats rounded to 6 digits)."""
    write_json(path, metrics, round_floats=6)


def write_run_info(path: str | Path, figures: dict) -> None:
    """A stage's run-info file: what differs from run to run (throughput, wall time, device) and the date. dvc.yaml
    lists these files under its top-level `metrics:`, never as a stage's output, so DVC shows them but never hashes
    them: dvc.lock stays a pure function of code, params and data."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(path, {**figures, "date": now}, round_floats=6)


def file_sha256(path: str | Path) -> str:
    """Checksum of a file read in blocks (downloads and token shards can be larger than memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def describe_files(paths: list[Path]) -> list[dict]:
    """Path, size and sha256 of input files that DVC does not track itself (files named in params.yaml): recorded in
    an output, they make a change of their content visible in dvc.lock. Content, not mtime: a fresh clone or a copy
    has other mtimes but reads the same bytes."""
    return [{"path": str(p), "bytes": Path(p).stat().st_size, "sha256": file_sha256(p)} for p in paths]


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
