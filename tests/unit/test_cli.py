"""The stages' common command-line behaviour: log lines led by the stage, written to the stdout of the moment."""

from __future__ import annotations

import io
import logging
import sys

from llm_core import cli


def test_log_lines_name_their_stage_and_follow_a_swapped_stdout(monkeypatch):
    cli.setup_logging("sft")
    log = logging.getLogger("llm_core.data.loader")
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", first)
    log.info("12 of 800 conversations (1.5%%) longer than 257 tokens left out")
    first.close()  # what a test's capture does at its end: the next record must not go there
    monkeypatch.setattr(sys, "stdout", second)
    log.warning("something to fix")
    assert second.getvalue() == "sft: warning: something to fix\n"
    cli.setup_logging("pretrain")  # a second set-up replaces the handler instead of adding one
    log.info("x")
    assert second.getvalue().endswith("sft: warning: something to fix\npretrain: x\n")
