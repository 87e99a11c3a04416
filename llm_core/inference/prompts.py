"""Prompts in bulk: read a prompts file, decode every prompt together, one output record per prompt.

A prompts file is `.txt` (one plain-text prompt per line, blank lines skipped) or `.jsonl` (one object per line,
with `prompt`: a plain-text prompt, or `messages`: a conversation the model answers through the chat template).
A bad line stops the run with its line number: a prompts file is written by hand, and silently dropping a line
would lose an output nobody would miss until later.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from llm_core.data.chat import validate_messages
from llm_core.inference.engine import Request, run_batch
from llm_core.inference.generate import SamplingParams
from llm_core.inference.loading import LoadedModel


@dataclass
class Prompt:
    kind: str  # "plain" | "chat"
    prompt: str | list[dict]  # the text, or the messages


def read_prompts_file(path: str | Path) -> list[Prompt]:
    path = Path(path)
    if path.suffix not in (".txt", ".jsonl"):
        raise ValueError(f"{path}: a prompts file is .txt (one prompt per line) or .jsonl (`prompt` or "
                         "`messages` per line); rename it or set sample.prompts_file")
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} not found; create it or set sample.prompts_file: \"\"")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    if path.suffix == ".txt":
        return [Prompt("plain", line) for line in lines if line.strip()]
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{n} is not valid JSON ({e}); fix or remove the line") from None
        if isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
            out.append(Prompt("plain", obj["prompt"]))
        elif isinstance(obj, dict) and isinstance(obj.get("messages"), list):
            try:
                validate_messages(obj["messages"])
            except (ValueError, AttributeError) as e:
                raise ValueError(f"{path}:{n}: {e}; each message needs role (system, user, assistant) and "
                                 "content") from None
            out.append(Prompt("chat", [{"role": m["role"], "content": m["content"]} for m in obj["messages"]]))
        else:
            raise ValueError(f"{path}:{n} has neither a `prompt` string nor a `messages` list; "
                             "give the line one of them")
    return out


def sample_prompts(loaded: LoadedModel, prompts: list[Prompt], params: SamplingParams, seed: int,
                   max_batch: int) -> tuple[list[dict], dict]:
    """Decode every prompt in one continuous batch; records in prompt order and the run's throughput.
    Prompt i draws with seed + i, so its output does not depend on which other prompts share the batch."""
    engine = loaded.engine(max_batch, seed)
    requests = []
    for i, p in enumerate(prompts):
        if p.kind == "plain":
            requests.append(Request(loaded.plain_prompt(p.prompt), params, loaded.stop_ids, seed + i))
        else:
            requests.append(Request(loaded.chat_prompt(p.prompt), params, loaded.chat_stop_ids, seed + i))
    t0 = time.perf_counter()
    results = run_batch(engine, requests)
    seconds = time.perf_counter() - t0
    records = [{"kind": p.kind, "prompt": p.prompt, "output": loaded.tokenizer.decode(r.tokens),
                "tokens": len(r.tokens), "prompt_tokens": r.prompt_tokens, "finish_reason": r.finish,
                "context_rolled": r.rolled} for p, r in zip(prompts, results)]
    tokens = sum(len(r.tokens) for r in results)
    return records, {"tokens": tokens, "seconds": seconds, "tokens_per_sec": tokens / seconds if seconds else 0.0}
