"""The terminal chat: a two-turn conversation through a pseudo-terminal, commands, -p, chat vs plain continuation,
checkpoint folders, a prompt longer than the context, and missing folders."""

from __future__ import annotations

import io
import os
import pty
import select
import shutil
import subprocess
import sys
import time

import pytest

from llm_core.inference import console
from llm_core.inference.generate import SamplingParams
from llm_core.inference.loading import load
from llm_core.model.io import INFO
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


@pytest.fixture(scope="module")
def models(served_models, tmp_path_factory):
    """The served `sft` chat model, the same weights as a base model (`pretrain`, with the model_info.json training
    writes) and as an SFT checkpoint folder, beside one `tokenizer/`."""
    root = tmp_path_factory.mktemp("console") / "models"
    shutil.copytree(served_models, root)
    shutil.copytree(root / "sft", root / "pretrain")
    (root / "pretrain" / INFO).write_text('{"chat": false, "stage": "pretrain"}\n')
    shutil.copytree(root / "sft", root / "sft" / "checkpoints" / "step_0000700")
    return root


def test_two_turn_conversation_through_a_pseudo_terminal(models):
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "llm_core.inference.console", "--model",
                             str(models / "sft"), "--max-tokens", "6", "--seed", "1"],
                            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=project_env(), close_fds=True)
    os.close(slave)
    seen: list[str] = []
    try:
        banner = _read_until(master, "you> ", seen)
        assert "talking to sft, a chat model (chat mode" in banner
        for line in ("Tell me a story.", "/temp 0", "/temp", "/topk nine", "/tokens", "And then?", "/raw",
                     "Once upon a time", "/exit"):
            os.write(master, (line + "\n").encode())
            out = _read_until(master, "you> ", seen) if line != "/exit" else ""
            if line in ("/temp 0", "/temp"):
                assert "(temperature = 0)" in out
            if line == "/topk nine":
                assert "needs a whole number" in out
            if line == "/tokens":
                assert "(max_new_tokens = 6)" in out
            if line == "/raw":
                assert "(plain continuation" in out
            if not line.startswith("/"):
                assert "model> " in out
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill() if proc.poll() is None else None
        os.close(master)


def _session(models, name: str, monkeypatch, **kw) -> tuple[console.Session, list]:
    """A session on models/<name> whose prompts are recorded as ("chat", messages) or ("plain", text)."""
    loaded = load(models / name, device="cpu")
    prompts: list = []
    chat, plain = loaded.chat_prompt, loaded.plain_prompt
    monkeypatch.setattr(loaded, "chat_prompt", lambda msgs: prompts.append(("chat", [dict(m) for m in msgs]))
                        or chat(msgs))
    monkeypatch.setattr(loaded, "plain_prompt", lambda text: prompts.append(("plain", text)) or plain(text))
    params = SamplingParams(max_new_tokens=4, temperature=0)
    return console.Session(loaded, loaded.engine(max_batch=1), params, kw.get("chat", loaded.chat)), prompts


def test_history_commands_and_raw_mode_with_piped_stdin(models, monkeypatch, capsys):
    session, prompts = _session(models, "sft", monkeypatch)
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\nsecond\n/clear\nthird\n/bogus\n/raw\nplain words\n"
                                                  "/raw\nfourth\n"))
    console.chat_loop(session)
    out = capsys.readouterr().out
    chats = [p for kind, p in prompts if kind == "chat"]
    assert [[m["content"] for m in p if m["role"] == "user"] for p in chats] == [
        ["first"], ["first", "second"], ["third"], ["third", "fourth"]]
    assert [m["role"] for m in chats[1]] == ["user", "assistant", "user"]  # the answer is part of the history
    assert [p for kind, p in prompts if kind == "plain"] == ["plain words"]  # continued as written, no history
    assert [kind for kind, _ in prompts] == ["chat", "chat", "chat", "plain", "chat"]
    assert "(conversation cleared)" in out and "unknown command /bogus" in out
    assert "(plain continuation" in out and "(chat mode" in out


def test_a_base_model_gets_plain_continuation_and_flags_switch_modes(models, monkeypatch, capsys):
    session, prompts = _session(models, "pretrain", monkeypatch)
    assert not session.chat and "a base model (plain continuation" in session.banner()
    console.answer(session, "Once upon a time")
    assert prompts == [("plain", "Once upon a time")] and session.messages == []
    # the command line: a base model with --chat, a chat model with --raw, and the default of each
    for name, flags, mode in (("pretrain", [], "plain"), ("pretrain", ["--chat"], "chat"), ("sft", [], "chat"),
                              ("sft", ["--raw"], "plain")):
        seen = []
        monkeypatch.setattr(console.LoadedModel, "chat_prompt", lambda self, m: seen.append("chat") or [1, 2])
        monkeypatch.setattr(console.LoadedModel, "plain_prompt", lambda self, t: seen.append("plain") or [1, 2])
        console.main(["--model", str(models / name), "-p", "hi", "--max-tokens", "2", *flags])
        assert seen == [mode], (name, flags)
    capsys.readouterr()


def test_one_shot_prompt_settings_and_bad_values(models, monkeypatch, capsys):
    console.main(["--model", str(models / "sft"), "-p", "hello", "--max-tokens", "3", "--temperature", "0"])
    assert capsys.readouterr().out.endswith("\n")
    session, _ = _session(models, "sft", monkeypatch)
    assert console.apply_command("/topp 1.5", session) == "/topp must be between 1e-06 and 1 (got 1.5)"
    assert console.apply_command("/penalty 1.3", session) == "(repetition_penalty = 1.3)"
    assert console.apply_command("/penalty", session) == "(repetition_penalty = 1.3)"  # alone: shows the value
    assert console.apply_command("/topk  ", session) == "(top_k = 0)"
    assert session.params.repetition_penalty == 1.3 and console.apply_command("/exit", session) is None


def test_a_checkpoint_folder_finds_its_runs_tokenizer(models):
    proc = subprocess.run([sys.executable, "-m", "llm_core.inference.console", "--model",
                           str(models / "sft" / "checkpoints" / "step_0000700"), "-p", "hi", "--max-tokens", "3"],
                          cwd=ROOT, env=project_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_prompt_longer_than_the_context_says_how_many_tokens_were_dropped(models, capsys):
    text = "Once upon a time there was a cat. " * 60  # ~2000 characters, far over the 128-token context
    console.main(["--model", str(models / "pretrain"), "-p", text, "--max-tokens", "2"])
    captured = capsys.readouterr()
    notice = [line for line in captured.err.splitlines() if "were dropped" in line]
    assert len(notice) == 1 and "more than the model's context of 128" in notice[0], captured.err
    n_prompt = len(load(models / "pretrain", device="cpu").plain_prompt(text))
    dropped = int(notice[0].split("its first ")[1].split()[0])
    assert f"the prompt is {n_prompt} tokens" in notice[0] and 0 < n_prompt - dropped < 128
    console.main(["--model", str(models / "pretrain"), "-p", "Once upon a time", "--max-tokens", "2"])
    assert "dropped" not in capsys.readouterr().err  # a prompt that fits says nothing


def _chat_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        console.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    return err


def test_missing_folders_name_the_folder_and_only_the_default_suggests_dvc_repro(models, tmp_path, monkeypatch,
                                                                                 capsys):
    monkeypatch.chdir(tmp_path)
    err = _chat_error(["--model", "models/sfft", "-p", "hi"], capsys)  # a typo
    assert "llm-chat: error: no model folder models/sfft (--model models/sfft)" in err and "dvc repro" not in err
    err = _chat_error(["-p", "hi"], capsys)  # the default path, outside a repository
    assert str(tmp_path / "models" / "sft") in err and "no dvc.yaml" in err and "dvc repro" not in err
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    err = _chat_error(["-p", "hi"], capsys)  # the default path in a repository where nothing ran yet
    assert "no model in models/sft yet" in err and "llm-chat: fix: run `dvc repro sft`" in err
    err = _chat_error(["--model", str(models / "sft" / "checkpoints"), "-p", "hi"], capsys)
    assert "step_0000700" in err and "pass one of them" in err and "dvc repro" not in err
    lone = tmp_path / "lone"
    shutil.copytree(models / "sft" / "checkpoints" / "step_0000700", lone)  # a model folder with no tokenizer near
    err = _chat_error(["--model", str(lone), "-p", "hi"], capsys)
    assert "no tokenizer for lone (looked for tokenizer.json in lone, tokenizer" in err and "--tokenizer" in err
    err = _chat_error(["--model", str(lone), "--tokenizer", "nowhere", "-p", "hi"], capsys)
    assert "no tokenizer.json in nowhere (--tokenizer)" in err
