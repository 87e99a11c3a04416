"""`llm-chat` (also `python -m llm_core.inference.console`): talk to a trained model in the terminal.

The whole conversation goes through the chat template at every turn, so the model sees the history; answers are
printed as they are produced. Commands change the sampling settings between turns. `-p "..."` answers one
message and exits (for scripts). Ctrl-C during an answer stops that answer; at the prompt it quits.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from llm_core import cli
from llm_core.inference.engine import Engine, Request
from llm_core.inference.generate import SamplingParams
from llm_core.inference.loading import LoadedModel, load
from llm_core.inference.text import TextStream

HELP = """commands:
  /clear          forget the conversation
  /temp 0.7       temperature (0 = greedy)
  /topk 50        keep the k most likely tokens (0 = off)
  /topp 0.9       nucleus sampling mass (1 = off)
  /penalty 1.1    repetition penalty (1 = off)
  /tokens 256     longest answer, in tokens
  /exit           quit (also /quit, Ctrl-D)"""

# command -> (SamplingParams field, type, lowest, highest, example)
SETTINGS = {
    "/temp": ("temperature", float, 0.0, 2.0, "0.7"),
    "/topk": ("top_k", int, 0, 100000, "50"),
    "/topp": ("top_p", float, 1e-6, 1.0, "0.9"),
    "/penalty": ("repetition_penalty", float, 1e-6, 10.0, "1.1"),
    "/tokens": ("max_new_tokens", int, 1, 100000, "256"),
}


def reply(engine: Engine, loaded: LoadedModel, messages: list[dict], params: SamplingParams,
          seed: int | None = None) -> Iterator[str]:
    """The assistant's answer to `messages`, piece by piece as it is decoded."""
    rid = engine.submit(Request(loaded.chat_prompt(messages), params, loaded.chat_stop_ids, seed))
    stream = TextStream(loaded.tokenizer)
    try:
        while True:
            for ev in engine.step():
                if ev.token is not None:
                    piece = stream.push(ev.token)
                    if piece:
                        yield piece
                if ev.finish:
                    tail = stream.flush()
                    if tail:
                        yield tail
                    return
    finally:
        engine.cancel(rid)  # a stopped answer frees its row (a no-op when it finished)


def apply_command(line: str, params: SamplingParams, messages: list[dict]) -> str | None:
    """Carry out a /command; the line to print, or None to quit."""
    name, _, arg = line.strip().partition(" ")
    if name in ("/exit", "/quit"):
        return None
    if name == "/clear":
        messages.clear()
        return "(conversation cleared)"
    if name == "/help":
        return HELP
    if name in SETTINGS:
        field, kind, lo, hi, example = SETTINGS[name]
        try:
            value = kind(arg)
        except ValueError:
            return f"{name} needs a {'whole ' if kind is int else ''}number, e.g. {name} {example}"
        if not lo <= value <= hi:
            return f"{name} must be between {lo:g} and {hi:g} (got {value:g})"
        setattr(params, field, value)
        return f"({field} = {value:g})"
    return f"unknown command {name}; /help lists them"


def main(argv: list[str] | None = None) -> None:
    def run() -> None:
        ap = argparse.ArgumentParser(prog="llm-chat", description="Chat with a trained model in the terminal.")
        ap.add_argument("--model", default="models/sft", help="model folder (default: models/sft)")
        ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: models/tokenizer beside it)")
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
            field, _, lo, hi, _ = SETTINGS[cmd]
            if not lo <= getattr(params, field) <= hi:
                raise ValueError(f"{flag} must be between {lo:g} and {hi:g} (got {getattr(params, field):g})")
        loaded = load(args.model, args.tokenizer, args.device)
        engine = loaded.engine(max_batch=1)
        if args.prompt is not None:
            for piece in reply(engine, loaded, [{"role": "user", "content": args.prompt}], params, args.seed):
                print(piece, end="", flush=True)
            print()
            return
        chat_loop(engine, loaded, params, args.seed)

    cli.run("llm-chat", run)


def chat_loop(engine: Engine, loaded: LoadedModel, params: SamplingParams, seed: int | None) -> None:
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    print(f"llm-chat: talking to {loaded.name}. /help lists the commands, /exit quits.", flush=True)
    messages: list[dict] = []
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
            out = apply_command(line, params, messages)
            if out is None:
                return
            print(out, flush=True)
            continue
        messages.append({"role": "user", "content": line})
        print("model> ", end="", flush=True)
        answer = []
        try:
            for piece in reply(engine, loaded, messages, params, seed):
                answer.append(piece)
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print(" [stopped]", end="")
        print(flush=True)
        messages.append({"role": "assistant", "content": "".join(answer)})


if __name__ == "__main__":
    main()
