"""The OpenAI-compatible request and response shapes: validation of what a client sends (hard limits checked before
any work, each error naming its field) and the JSON of completions, chunks and errors.

Only what this server does is accepted: one choice (`n` = 1), no stop strings, no tools. Sampling takes the OpenAI
fields (`temperature`, `top_p`, `max_tokens` or `max_completion_tokens`, `seed`) plus two of its own, `top_k` and
`repetition_penalty` (the openai client sends them through `extra_body`).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass

from llm_core.data.chat import ROLES
from llm_core.inference.generate import SamplingParams

MAX_BODY_BYTES = 1 << 20
MAX_MESSAGES = 500
MAX_CHARS = 8000  # one message, or a completion prompt
MAX_TOTAL_CHARS = 32000  # the whole conversation
MAX_TOKENS = 4096
DEFAULT_MAX_TOKENS = 256
MAX_TOP_K = 1000


class ApiError(Exception):
    """A bad request: HTTP status, a message saying what is wrong and what is allowed, and the field it is about."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class ParsedRequest:
    kind: str  # "chat" | "completion"
    messages: list[dict] | None
    prompt: str | None
    params: SamplingParams
    stream: bool
    include_usage: bool
    seed: int | None


def too_large() -> ApiError:
    return ApiError(413, f"request body is over {MAX_BODY_BYTES} bytes (1 MiB); send a shorter conversation")


def parse_json(raw: bytes) -> dict:
    if len(raw) > MAX_BODY_BYTES:
        raise too_large()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON ({e})") from None
    except RecursionError:  # the parser recurses once per level: 50,000 nested [ would be a crash, not a request
        raise ApiError(400, "request body is JSON nested too deeply to parse; a request needs a few levels "
                            "(an object with a list of message objects)") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _short(value) -> str:
    """A client's value in an error message, cut short (a number may have thousands of digits)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _bounds(lo: float, hi: float, lo_open: bool = False) -> str:
    """An allowed range in words: "between 0 and 2", "greater than 0 and at most 1", "1"."""
    if lo == hi:
        return f"{lo:g}"
    return f"greater than {lo:g} and at most {hi:g}" if lo_open else f"between {lo:g} and {hi:g}"


def _number(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float)
                                                                          and not math.isfinite(value)):
        raise ApiError(400, f"{key} must be a number (got {_short(value)})", key)
    if value > hi or value < lo or (lo_open and value == lo):
        raise ApiError(400, f"{key} must be {_bounds(lo, hi, lo_open)} (got {_short(value)})", key)
    return float(value)


def _integer(body: dict, key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{key} must be an integer (got {_short(value)})", key)
    if not lo <= value <= hi:
        raise ApiError(400, f"{key} must be {_bounds(lo, hi)} (got {_short(value)})", key)
    return value


def _content(value, where: str) -> str:
    """A message's text: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise ApiError(400, f"{where} must be a string or a list of text parts", where)


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "messages must be a non-empty list of {role, content}", "messages")
    if len(msgs) > MAX_MESSAGES:
        raise ApiError(400, f"messages has {len(msgs)} entries; at most {MAX_MESSAGES} are allowed", "messages")
    out, total = [], 0
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object with role and content", f"messages[{i}]")
        role = m.get("role")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)} (got {role!r})",
                           f"messages[{i}].role")
        text = _content(m.get("content"), f"messages[{i}].content")
        if len(text) > MAX_CHARS:
            raise ApiError(400, f"messages[{i}].content has {len(text)} characters; at most {MAX_CHARS} are "
                           "allowed", f"messages[{i}].content")
        total += len(text)
        out.append({"role": role, "content": text})
    if total > MAX_TOTAL_CHARS:
        raise ApiError(400, f"messages have {total} characters in all; at most {MAX_TOTAL_CHARS} are allowed",
                       "messages")
    return out


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (one prompt per request)", "prompt")
    if len(prompt) > MAX_CHARS:
        raise ApiError(400, f"prompt has {len(prompt)} characters; at most {MAX_CHARS} are allowed", "prompt")
    return prompt


def parse_request(body: dict, kind: str, model_id: str, vocab_size: int) -> ParsedRequest:
    """Check every field before any work; raises ApiError naming the first bad one."""
    model = body.get("model")
    if model is not None and model != model_id:
        raise ApiError(404, f"model {model!r} is not served here; this server has {model_id!r}", "model",
                       "model_not_found")
    messages = _messages(body) if kind == "chat" else None
    prompt = _prompt(body) if kind == "completion" else None
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _integer({key: max_tokens}, key, DEFAULT_MAX_TOKENS, 1, MAX_TOKENS)
    params = SamplingParams(
        max_new_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=_integer(body, "top_k", 0, 0, min(MAX_TOP_K, vocab_size)),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 2.0, lo_open=True),
    )
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):  # one choice per request
        raise ApiError(400, f"n must be 1: this server returns one choice per request (got {n!r}); send n "
                            "requests with different seeds for n answers", "n")
    for key in ("frequency_penalty", "presence_penalty"):
        if _number(body, key, 0.0, -2.0, 2.0) != 0.0:
            raise ApiError(400, f"{key} is not supported; use repetition_penalty (> 1 discourages repeats)", key)
    if body.get("stop"):
        raise ApiError(400, "stop strings are not supported; generation stops at the end of the model's turn",
                       "stop")
    if body.get("tools"):
        raise ApiError(400, "tools are not supported by this model", "tools")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false (got {stream!r})", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    seed = _integer(body, "seed", None, -(2 ** 63), 2 ** 63 - 1)
    return ParsedRequest(kind, messages, prompt, params, stream, bool(options.get("include_usage")), seed)


# ---------------------------------------------------------------------------------------------------------- replies

def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int, dropped: int = 0) -> dict:
    """OpenAI's usage, plus `prompt_tokens_dropped`: the prompt's first tokens that did not fit the model's context
    (the model never read them; 0 when the prompt fits)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_dropped": dropped}


def chunk(kind: str, rid: str, model: str, created: int, text: str | None, finish: str | None,
          first: bool = False) -> dict:
    """One streamed piece in OpenAI's chunk format."""
    if kind == "chat":
        delta = {"role": "assistant", "content": text or ""} if first else ({"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [choice]}
    choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice]}


def usage_chunk(kind: str, rid: str, model: str, created: int, use: dict) -> dict:
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": use}


def completion(kind: str, rid: str, model: str, text: str, finish: str, use: dict) -> dict:
    created = int(time.time())
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish}
        return {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": [choice],
                "usage": use}
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice],
            "usage": use}
