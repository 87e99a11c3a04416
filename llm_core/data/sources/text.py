"""Decoding files into text and cutting text into documents, streamed: a file is never held whole in memory.

A byte that is not valid in the configured encoding stops the stage with the file, the byte's offset and the params
key to change; plain text is cut at blank lines into documents of about TXT_CHUNK_CHARS characters.
"""

from __future__ import annotations

import codecs
import gzip
from collections.abc import Iterable, Iterator
from pathlib import Path

from llm_core.data.sources.schema import DataError, key

TXT_CHUNK_CHARS = 4000  # a plain text file is cut at paragraph boundaries into documents of about this size
READ_BLOCK = 1 << 20


def decoded_blocks(path: Path, encoding: str, kind: str = "pretrain") -> Iterator[str]:
    """The file's text in blocks of about READ_BLOCK bytes (a .gz file decompressed); undecodable bytes stop it
    with the file, the offset and the key."""
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
                                f"{key(kind, 'encoding')} to the file's encoding (e.g. cp1252 or latin-1) in "
                                "params.yaml") from None
            if text:
                yield text
            if not block:
                return
            offset += len(block)


def lines(path: Path, encoding: str, kind: str) -> Iterator[str]:
    """The file's lines without their newline, streamed."""
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
