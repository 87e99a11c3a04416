"""How a stage or command ends on a user mistake: one readable block on stderr (the stage, the problem, the fix) and
exit status 2, no traceback. `LLM_CORE_DEBUG=1` shows the traceback. A real bug still shows its traceback: only the
error types our code raises for user mistakes, raised by our own code, are turned into the short block."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from llm_core.errors import UserError

DEBUG_ENV = "LLM_CORE_DEBUG"
_OURS = (str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "stages"))


USER_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError)


def _raised_by_us(err: BaseException) -> bool:
    """True when the error comes from a `raise` statement in llm_core/ or stages/: a deliberate report of a user
    mistake. An error raised inside a library, or by a failing expression of ours, is a bug: it keeps its traceback."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return False
    last = frames[-1]
    return (str(Path(last.filename).resolve()).startswith(_OURS)
            and (last.line or "").lstrip().startswith("raise"))


def format_error(stage: str, message: str) -> str:
    """`<stage>: error: <problem>` then, when the message ends in '; <fix>', the fix on its own line."""
    problem, sep, fix = message.rpartition("; ")
    if not sep or len(fix) < 8:
        problem, fix = message, ""
    lines = [f"{stage}: error: {problem}"]
    if fix:
        lines.append(f"{stage}: fix: {fix}")
    lines.append(f"({DEBUG_ENV}=1 shows the traceback)")
    return "\n".join(lines)


class _StageFormatter(logging.Formatter):
    """`<stage>: <message>`, and `<stage>: warning: <message>` from WARNING up: every line says whose it is."""

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return f"{self.stage}: {level}{record.getMessage()}"


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is when a record comes (not the one at set-up), so a caller that swaps stdout
    (a test's capture, a notebook) never leaves the core logging into a closed stream."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def setup_logging(stage: str) -> None:
    """Route the core's log records (llm_core.*) to stdout with the stage's name in front."""
    logger = logging.getLogger("llm_core")
    for handler in [h for h in logger.handlers if isinstance(h, _StdoutHandler)]:
        logger.removeHandler(handler)
    handler = _StdoutHandler()
    handler.setFormatter(_StageFormatter(stage))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def run(stage: str, main: Callable[[], object]) -> None:
    """Call `main`; on a user mistake print the short block and exit 2."""
    setup_logging(stage)
    try:
        main()
    except KeyboardInterrupt:
        print(f"{stage}: interrupted", file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as err:
        if os.environ.get(DEBUG_ENV) == "1" or not _raised_by_us(err):
            raise
        message = str(err)
        if isinstance(err, FileNotFoundError) and err.filename and message.startswith("[Errno"):
            message = f"{err.filename} not found; check the path"
        print(format_error(stage, message), file=sys.stderr, flush=True)
        sys.exit(2)
