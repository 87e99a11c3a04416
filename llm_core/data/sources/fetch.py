"""Fetching one file over HTTP(S): resumable, checked against an expected sha256 when one is given."""

from __future__ import annotations

import http.client
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from llm_core.data.sources.schema import DataError
from llm_core.files import file_sha256

log = logging.getLogger(__name__)


class _Interrupted(Exception):
    pass


def fetch_url(url: str, target: Path, sha256: str = "", chunk: int = 1 << 20, retries: int = 5,
              key: str = "data.url") -> Path:
    """Download with resume: a `.part` file left by an interrupted transfer continues with an HTTP Range request,
    both across runs and, up to `retries` times, within one. With `sha256`, a mismatch removes the download."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and (not sha256 or file_sha256(target) == sha256.lower()):
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
