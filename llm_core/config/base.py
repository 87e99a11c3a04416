"""What every params section shares: the error type, the key-read tracing base class and the value checks."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from llm_core.errors import UserError

TRACE_ENV = "LLM_CORE_TRACE_PARAMS"  # a file: each process appends the params keys it read (tests keep dvc.yaml exact)
_read_keys: set[str] | None = None  # the keys read so far, while tracing


class ParamsError(UserError, ValueError):
    """A params.yaml problem; the message names the key and the fix."""


# --------------------------------------------------------------------------------------------------------------------
# Sections


class _Section:
    """Base of the params sections. With LLM_CORE_TRACE_PARAMS set, reading a key of a section loaded from params.yaml
    records its dotted name, so a test can check that dvc.yaml declares every key each stage really reads.

    The recording hook is installed by `start_trace` only: an attribute hook on every config object would make
    torch.compile (Dynamo) give up on any function that reads a config, and untraced runs need none."""

    _path = ""


def _traced_getattribute(self, name: str):
    value = object.__getattribute__(self, name)
    if _read_keys is not None and not name.startswith("_") and not isinstance(value, _Section):
        path = object.__getattribute__(self, "_path")
        if path and name in object.__getattribute__(self, "__dataclass_fields__"):
            _read_keys.add(f"{path}.{name}")  # a key, not a sub-section: those record their own keys
    return value


def start_trace(params: Any) -> None:
    """Record the keys read from now on (validation above read them all) and append them to the trace at exit."""
    global _read_keys
    import atexit
    import sys

    def mark(obj, path: str) -> None:
        object.__setattr__(obj, "_path", path)
        for f in dataclasses.fields(obj):
            value = object.__getattribute__(obj, f.name)
            if dataclasses.is_dataclass(value):
                mark(value, f"{path}.{f.name}")

    for f in dataclasses.fields(params):
        mark(getattr(params, f.name), f.name)
    if _read_keys is None:
        _read_keys = set()
        _Section.__getattribute__ = _traced_getattribute  # every section class inherits it from here on

        def dump() -> None:
            with open(os.environ[TRACE_ENV], "a") as fh:
                fh.write(json.dumps({"argv": sys.argv, "keys": sorted(_read_keys)}) + "\n")

        atexit.register(dump)


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        shown = ", ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in allowed)
        raise ParamsError(f"params.yaml: {key} must be one of {shown} (got {value!r})")


def _at_least(key: str, value: Any, minimum: float) -> None:
    if value < minimum:
        raise ParamsError(f"params.yaml: {key} must be >= {minimum} (got {value})")


def _auto_or_int(key: str, value: Any) -> None:
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamsError(f"params.yaml: {key} must be auto or an integer >= 1 (got {value!r})")


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


