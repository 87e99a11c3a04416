"""The terminal chat: a two-turn conversation through a pseudo-terminal, commands, -p, and a missing model."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time

from llm_core.inference import console
from llm_core.inference.generate import SamplingParams
from tests.helpers import ROOT, project_env


def _read_until(fd: int, marker: str, seen: list[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while marker not in "".join(seen):
        assert time.monotonic() < deadline, f"no {marker!r} in:\n{''.join(seen)}"
        if select.select([fd], [], [], 0.5)[0]:
            try:
                seen.append(os.read(fd, 4096).decode(errors="replace"))
            except OSError:  # the child closed the terminal
                break
    text = "".join(seen)
    seen.clear()
    seen.append(text[text.index(marker) + len(marker):] if marker in text else "")
    return text


def test_two_turn_conversation_through_a_pseudo_terminal(served_models):
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "llm_core.inference.console", "--model",
                             str(served_models / "sft"), "--max-tokens", "6", "--seed", "1"],
                            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=project_env(), close_fds=True)
    os.close(slave)
    seen: list[str] = []
    try:
        assert "talking to sft" in _read_until(master, "you> ", seen)
        for line in ("Tell me a story.", "/temp 0", "/topk nine", "And then?", "/exit"):
            os.write(master, (line + "\n").encode())
            out = _read_until(master, "you> ", seen) if line != "/exit" else ""
            if line == "/temp 0":
                assert "(temperature = 0)" in out
            if line == "/topk nine":
                assert "needs a whole number" in out
            if not line.startswith("/"):
                assert "model> " in out
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill() if proc.poll() is None else None
        os.close(master)


def test_history_and_commands_with_piped_stdin(served_models, monkeypatch, capsys):
    from llm_core.inference.engine import Engine
    from llm_core.inference.loading import load

    loaded = load(served_models / "sft", device="cpu")
    prompts = []
    render = loaded.chat_prompt
    monkeypatch.setattr(loaded, "chat_prompt", lambda msgs: prompts.append([dict(m) for m in msgs]) or render(msgs))
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\nsecond\n/clear\nthird\n/bogus\n"))
    engine = Engine(loaded.model, max_batch=1, special_ids=loaded.special_ids)
    console.chat_loop(engine, loaded, SamplingParams(max_new_tokens=4, temperature=0), seed=None)
    out = capsys.readouterr().out
    assert [[m["content"] for m in p if m["role"] == "user"] for p in prompts] == [
        ["first"], ["first", "second"], ["third"]]
    assert [m["role"] for m in prompts[1]] == ["user", "assistant", "user"]  # the answer is part of the history
    assert "(conversation cleared)" in out and "unknown command /bogus" in out


def test_one_shot_prompt_and_bad_values(served_models, capsys):
    console.main(["--model", str(served_models / "sft"), "-p", "hello", "--max-tokens", "3", "--temperature", "0"])
    assert capsys.readouterr().out.endswith("\n")
    params = SamplingParams()
    assert console.apply_command("/topp 1.5", params, []) == "/topp must be between 1e-06 and 1 (got 1.5)"
    assert console.apply_command("/penalty 1.3", params, []) == "(repetition_penalty = 1.3)"
    assert params.repetition_penalty == 1.3 and console.apply_command("/exit", params, []) is None


def test_missing_model_names_the_stage_to_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "llm_core.inference.console", "--model", str(tmp_path / "sft"),
                           "-p", "hi"], cwd=ROOT, env=project_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "llm-chat: error: no model in" in proc.stderr and "dvc repro sft" in proc.stderr
    assert "Traceback" not in proc.stderr
