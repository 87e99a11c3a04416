"""`llm-chat` (also `python -m llm_core.inference.console`): talk to a trained model in the terminal.

Two modes. A chat model (the SFT stage's output) gets chat mode: the whole conversation goes through the chat
template at every turn, so the model sees the history. A base model (pretraining's output) gets plain continuation:
each line is continued as written, as the model saw text in training. `--raw` / `--chat` pick the mode at start,
`/raw` switches between them. Answers are printed as they are decoded; commands change the sampling settings
between turns (`/temp` alone shows the value). `-p "..."` answers one message and exits (for scripts). A prompt
longer than the model's context loses its start, and a line on stderr says how many tokens. Ctrl-C during an answer
stops that answer; at the prompt it quits.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from llm_core import cli
from llm_core.data.tokenizer import Tokenizer
from llm_core.inference.engine import Engine, Event, Request
from llm_core.inference.generate import SamplingParams
from llm_core.inference.loading import LoadedModel, find_model, load
from llm_core.inference.text import TextStream

DEFAULT_MODEL = "models/sft"

HELP = """commands:
  /raw            switch between chat mode and plain continuation
  /clear          forget the conversation
  /temp 0.7       temperature (0 = greedy)
  /topk 50        keep the k most likely tokens (0 = off)
  /topp 0.9       nucleus sampling mass (1 = off)
  /penalty 1.1    repetition penalty (1 = off)
  /tokens 256     longest answer, in tokens
  /temp, /topk, ... alone show the current value
  /exit           quit (also /quit, Ctrl-D)"""

# command -> (SamplingParams field, type, lowest, highest, example)
SETTINGS = {
    "/temp": ("temperature", float, 0.0, 2.0, "0.7"),
    "/topk": ("top_k", int, 0, 100000, "50"),
    "/topp": ("top_p", float, 1e-6, 1.0, "0.9"),
    "/penalty": ("repetition_penalty", float, 1e-6, 10.0, "1.1"),
    "/tokens": ("max_new_tokens", int, 1, 100000, "256"),
}

MODES = {True: "chat mode: the conversation goes through the chat template",
         False: "plain continuation: each line is continued as written, without the chat template"}


class Reply:
    """One answer being decoded. `start()` runs until the prompt is in (then `dropped`, the prompt tokens the
    context could not hold, is known); iterating yields the answer's text piece by piece."""

    def __init__(self, engine: Engine, tokenizer: Tokenizer, prompt: list[int], stops: list[int],
                 params: SamplingParams, seed: int | None):
        self.engine = engine
        self.prompt_tokens = len(prompt)
        self.dropped: int | None = None
        self.finish: str | None = None
        self._events: deque[Event] = deque()
        self._text = TextStream(tokenizer)
        self.rid = engine.submit(Request(prompt, params, stops, seed))

    def _pump(self) -> None:
        while not self._events:
            self._events.extend(ev for ev in self.engine.step() if ev.rid == self.rid)
        if self.dropped is None:  # the first event: the window the engine cut the prompt to
            self.dropped = self._events[0].rolled

    def start(self) -> Reply:
        self._pump()
        return self

    def __iter__(self) -> Iterator[str]:
        while self.finish is None:
            self._pump()
            ev = self._events.popleft()
            piece = self._text.push(ev.token) if ev.token is not None else ""
            if ev.finish:
                self.finish = ev.finish
                piece += self._text.flush()
            if piece:
                yield piece

    def cancel(self) -> None:
        """Free the engine's row (a no-op when the answer finished)."""
        self.engine.cancel(self.rid)


@dataclass
class Session:
    """What the terminal chat keeps between lines: the mode, the settings and the conversation."""

    loaded: LoadedModel
    engine: Engine
    params: SamplingParams
    chat: bool  # chat mode (the template, with history); False: plain continuation of each line
    seed: int | None = None
    messages: list[dict] = field(default_factory=list)

    def banner(self) -> str:
        kind = "chat" if self.loaded.chat else "base"
        return (f"llm-chat: talking to {self.loaded.name}, a {kind} model ({MODES[self.chat]}; /raw switches). "
                "/help lists the commands, /exit quits.")

    def reply(self, text: str) -> Reply:
        """Start the answer to a line typed by the user (in chat mode it joins the conversation)."""
        lm = self.loaded
        if self.chat:
            self.messages.append({"role": "user", "content": text})
            prompt, stops = lm.chat_prompt(self.messages), lm.chat_stop_ids
        else:
            prompt, stops = lm.plain_prompt(text), lm.stop_ids
        return Reply(self.engine, lm.tokenizer, prompt, stops, self.params, self.seed)

    def dropped_notice(self, reply: Reply) -> str | None:
        """One line when the prompt did not fit the context, else None."""
        if not reply.dropped:
            return None
        what, which = ("conversation", "oldest") if self.chat else ("prompt", "first")
        line = (f"(the {what} is {reply.prompt_tokens} tokens, more than the model's context of "
                f"{self.loaded.context}: its {which} {reply.dropped} tokens were dropped")
        return line + ("; /clear starts afresh)" if self.chat and len(self.messages) > 1 else ")")


def apply_command(line: str, session: Session) -> str | None:
    """Carry out a /command; the line to print, or None to quit."""
    name, _, arg = line.strip().partition(" ")
    arg = arg.strip()
    params = session.params
    if name in ("/exit", "/quit"):
        return None
    if name == "/clear":
        session.messages.clear()
        return "(conversation cleared)"
    if name == "/help":
        return HELP + f"\nnow in {MODES[session.chat]}"
    if name == "/raw":
        session.chat = not session.chat
        return f"({MODES[session.chat]}; /raw switches back)"
    if name in SETTINGS:
        field_, kind, lo, hi, example = SETTINGS[name]
        if not arg:
            return f"({field_} = {getattr(params, field_):g})"
        try:
            value = kind(arg)
        except ValueError:
            return f"{name} needs a {'whole ' if kind is int else ''}number, e.g. {name} {example}"
        if not lo <= value <= hi:
            return f"{name} must be between {lo:g} and {hi:g} (got {value:g})"
        setattr(params, field_, value)
        return f"({field_} = {value:g})"
    return f"unknown command {name}; /help lists them"


def answer(session: Session, text: str, prefix: str = "") -> str:
    """Decode the answer to `text`, printing it as it comes (after `prefix`); Ctrl-C stops it. Returns the text."""
    reply = session.reply(text)
    pieces: list[str] = []
    try:
        reply.start()
        notice = session.dropped_notice(reply)
        if notice:
            print(notice, file=sys.stderr, flush=True)
        print(prefix, end="", flush=True)
        for piece in reply:
            pieces.append(piece)
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        print(" [stopped]", end="")
    finally:
        reply.cancel()
    print(flush=True)
    if session.chat:  # a stopped answer stays in the history as far as it went
        session.messages.append({"role": "assistant", "content": "".join(pieces)})
    return "".join(pieces)


def main(argv: list[str] | None = None) -> None:
    def run() -> None:
        ap = argparse.ArgumentParser(prog="llm-chat", description="Chat with a trained model in the terminal.")
        ap.add_argument("--model", default=DEFAULT_MODEL, help=f"model folder (default: {DEFAULT_MODEL}); also a "
                        "checkpoint, e.g. models/sft/checkpoints/step_0000700 or models/sft/best")
        ap.add_argument("--tokenizer", default=None,
                        help="tokenizer folder (default: the model's own, else a tokenizer/ folder beside or above it)")
        mode = ap.add_mutually_exclusive_group()
        mode.add_argument("--raw", action="store_true",
                          help="plain continuation of your text, even for a chat model")
        mode.add_argument("--chat", action="store_true", help="the chat template, even for a base model")
        ap.add_argument("-p", "--prompt", default=None, help="answer this one message and exit")
        ap.add_argument("--temperature", type=float, default=0.8)
        ap.add_argument("--top-k", type=int, default=50)
        ap.add_argument("--top-p", type=float, default=0.95)
        ap.add_argument("--penalty", type=float, default=1.1, help="repetition penalty (1 = off)")
        ap.add_argument("--max-tokens", type=int, default=256)
        ap.add_argument("--seed", type=int, default=None, help="fix the sampling (same answers every run)")
        ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")
        args = ap.parse_args(argv)
        params = SamplingParams(args.max_tokens, args.temperature, args.top_k, args.top_p, args.penalty)
        for flag, cmd in (("--temperature", "/temp"), ("--top-k", "/topk"), ("--top-p", "/topp"),
                          ("--penalty", "/penalty"), ("--max-tokens", "/tokens")):
            field_, _, lo, hi, _ = SETTINGS[cmd]
            if not lo <= getattr(params, field_) <= hi:
                raise ValueError(f"{flag} must be between {lo:g} and {hi:g} (got {getattr(params, field_):g})")
        loaded = load(find_model(args.model, DEFAULT_MODEL), args.tokenizer, args.device)
        chat = args.chat or (loaded.chat and not args.raw)
        session = Session(loaded, loaded.engine(max_batch=1), params, chat, args.seed)
        if args.prompt is not None:
            answer(session, args.prompt)
            return
        chat_loop(session)

    cli.run("llm-chat", run)


def chat_loop(session: Session) -> None:
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    print(session.banner(), flush=True)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return
        if not interactive:
            print(line)  # echo piped input so the transcript reads like a session
        if not line.strip():
            continue
        if line.startswith("/"):
            out = apply_command(line, session)
            if out is None:
                return
            print(out, flush=True)
            continue
        answer(session, line, prefix="model> ")


if __name__ == "__main__":
    main()
