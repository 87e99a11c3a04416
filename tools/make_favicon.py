"""Write llm_core/inference/static/favicon.ico: the chat page's icon (a white speech bubble on the page's blue),
a 32x32 PNG inside an ICO container, drawn here so that the committed binary can be remade from source
(`python tools/make_favicon.py`; `--check` says whether the committed icon is this file's drawing)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

SIZE = 32
BLUE, WHITE, CLEAR = (0x2F, 0x6F, 0xDF, 255), (255, 255, 255, 255), (0, 0, 0, 0)
OUT = Path(__file__).resolve().parents[1] / "llm_core" / "inference" / "static" / "favicon.ico"


def _inside_rounded(x: float, y: float, x0: float, y0: float, x1: float, y1: float, r: float) -> bool:
    """Whether pixel centre (x, y) lies in the rectangle [x0, x1] x [y0, y1] with corners of radius r."""
    cx, cy = min(max(x, x0 + r), x1 - r), min(max(y, y0 + r), y1 - r)
    return x0 <= x <= x1 and y0 <= y <= y1 and (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def _in_tail(x: float, y: float) -> bool:
    """The bubble's tail: a triangle under its lower left part."""
    return 20 <= y <= 26 and 9 <= x <= 15 - (y - 20)


def pixel(x: int, y: int) -> tuple[int, int, int, int]:
    cx, cy = x + 0.5, y + 0.5
    if not _inside_rounded(cx, cy, 0, 0, SIZE, SIZE, 7):
        return CLEAR
    if _inside_rounded(cx, cy, 6, 7, 26, 21, 4) or _in_tail(cx, cy):
        return WHITE
    return BLUE


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(v for x in range(SIZE) for v in pixel(x, y)) for y in range(SIZE))
    header = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b""))


def ico(image: bytes) -> bytes:
    """One-image ICO (a PNG entry, as Windows Vista and every browser read it)."""
    directory = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", SIZE, SIZE, 0, 0, 1, 32, len(image), 6 + 16)
    return directory + entry + image


if __name__ == "__main__":
    import json
    import sys

    icon = ico(png())
    if "--check" in sys.argv[1:]:  # the committed icon is what this file draws (write nothing)
        print(json.dumps({"bytes": len(icon), "matches": OUT.read_bytes() == icon}))
    else:
        OUT.write_bytes(icon)
        print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
