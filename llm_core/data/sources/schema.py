"""What a record of each dataset kind is, and how a raw row from any source becomes one.

`pretrain` records are {"text"}; `sft` records are {"messages": [{role, content}, ...]}; `hellaswag` and `probe`
(the in-training HellaSwag curve's own items) keep the official HellaSwag jsonl schema. A row that cannot become a
record is skipped and counted in `stats` (it ends up in info.json), or stops the stage when the mistake is the
configuration's (a column that does not exist).
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa

log = logging.getLogger(__name__)

KINDS = ("pretrain", "sft", "hellaswag", "probe")
HELLASWAG_KINDS = ("hellaswag", "probe")  # every item is evaluation data: no train/val split
DEFAULT_COLUMN = {"pretrain": "text", "sft": "messages", "hellaswag": None, "probe": None}
HELLASWAG_KEYS = ("ctx", "endings", "label")
# The official schema, kept whole so the items stay comparable with other HellaSwag evaluations.
HELLASWAG_SCHEMA = pa.schema([("ind", pa.int64()), ("activity_label", pa.string()), ("ctx_a", pa.string()),
                              ("ctx_b", pa.string()), ("ctx", pa.string()), ("endings", pa.list_(pa.string())),
                              ("label", pa.int64()), ("split", pa.string()), ("split_type", pa.string()),
                              ("source_id", pa.string())])


class DataError(ValueError):
    """Bad input data; the message names the file and the fix."""


def key(kind: str, name: str) -> str:
    """The params key of `name` for a dataset kind: data.url, data.sft.url, ..."""
    return f"data.{name}" if kind == "pretrain" else f"data.{kind}.{name}"


def count(stats: dict, what: str) -> None:
    stats[what] = stats.get(what, 0) + 1


def record_bytes(kind: str, rec: dict) -> int:
    """UTF-8 bytes of a record's text (what max_bytes and the shard bounds count)."""
    if kind == "pretrain":
        return len(rec["text"].encode())
    if kind == "sft":
        return sum(len(m["content"].encode()) for m in rec["messages"])
    return len(rec["ctx"].encode()) + sum(len(e.encode()) for e in rec["endings"])


def normalise(kind: str, row: dict, column: str | None, path, stats: dict, lineno: int | None = None):
    """The record of `row` for a dataset kind, or None (counted) when the row holds none."""
    where = f"{path}:{lineno}" if lineno else str(path)
    if not isinstance(row, dict):
        count(stats, "skipped_malformed")
        log.warning("%s: skipped a record that is not an object", where)
        return None
    if kind in HELLASWAG_KINDS:
        return hellaswag_item(row, where, stats)
    if column not in row:
        raise DataError(f"{where}: record has no field {column!r} (fields: {sorted(row)}); set "
                        f"{key(kind, 'column')}")
    value = row[column]
    if kind == "pretrain":
        if not isinstance(value, str) or not value.strip():
            count(stats, "skipped_empty")
            return None
        return {"text": value}
    try:
        if isinstance(value, str):
            value = json.loads(value)
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    except (TypeError, KeyError, json.JSONDecodeError):
        count(stats, "skipped_malformed")
        log.warning("%s: skipped a conversation that is not a list of {role, content}", where)
        return None
    if not msgs:
        count(stats, "skipped_empty")
        return None
    return {"messages": msgs}


def hellaswag_item(row: dict, where: str, stats: dict) -> dict | None:
    """A row in the official schema (the hub's string labels become integers), or None without ctx / endings /
    a valid label."""
    missing = [k for k in HELLASWAG_KEYS if k not in row]
    try:
        endings = [str(e) for e in row["endings"]] if not missing else []
        label = int(row["label"]) if not missing else -1  # the hub's copy stores labels as strings
    except (TypeError, ValueError):
        endings, label = [], -1
    if missing or len(endings) < 2 or not 0 <= label < len(endings):
        count(stats, "skipped_malformed")
        log.warning("%s: skipped a HellaSwag item without %s", where, missing or "a valid label and endings")
        return None
    ctx = str(row["ctx"])
    ind = row.get("ind")
    return {"ind": int(ind) if isinstance(ind, (int, str)) and str(ind).isdigit() else -1,
            "activity_label": str(row.get("activity_label") or ""), "ctx_a": str(row.get("ctx_a") or ctx),
            "ctx_b": str(row.get("ctx_b") or ""), "ctx": ctx, "endings": endings, "label": label,
            "split": str(row.get("split") or ""), "split_type": str(row.get("split_type") or ""),
            "source_id": str(row.get("source_id") or "")}
