"""Conversation rendering and assistant-only loss masks.

The format, also saved as the Jinja `chat_template` in tokenizer_config.json (tests check both agree):
    <|bos|><|user|>...<|end|><|assistant|>...<|end|>
Only the assistant's own tokens (its content and the closing <|end|>) are learned: the model is never trained to
write the user's turn, so it answers instead of continuing the prompt.

An imported Hugging Face tokenizer brings its own chat template (Jinja, in tokenizer_config.json): `render` then
renders that template as transformers' `apply_chat_template` does and tokenizes the text with the tokenizer itself,
and the learned tokens are those inside the text each assistant turn adds (what follows the generation prompt of the
turns before it, up to and including the template's end-of-turn marker). A conversation always opens with the
tokenizer's document separator (bos, or eos when it has none), as pretraining documents do, so that packed rows
split into conversations at it; a template that starts with it already keeps one.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

ROLES = ("system", "user", "assistant")


def validate_messages(messages: Sequence[dict]) -> None:
    if not messages:
        raise ValueError("a conversation needs at least one message")
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            raise ValueError(f"message {i}: role must be one of {ROLES} (got {m.get('role')!r})")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"message {i}: content must be a string")


def render(messages: Sequence[dict], tokenizer, add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and a same-length 0/1 mask: 1 where the token is an assistant token to learn."""
    validate_messages(messages)
    if getattr(tokenizer, "chat_template", None) is not None:
        return _render_template(messages, tokenizer, add_generation_prompt)
    special = tokenizer.special_ids
    ids, mask = [tokenizer.bos_id], [0]
    for m in messages:
        learn = int(m["role"] == "assistant")
        ids.append(special[f"<|{m['role']}|>"])
        mask.append(0)  # the role marker is given, not predicted
        body = tokenizer.encode(m["content"]) + [tokenizer.end_id]
        ids.extend(body)
        mask.extend([learn] * len(body))
    if add_generation_prompt:
        ids.append(special["<|assistant|>"])
        mask.append(0)
    return ids, mask


def render_text(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """The same rendering as a string (what the Jinja template produces)."""
    validate_messages(messages)
    out = "<|bos|>" + "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
    return out + ("<|assistant|>" if add_generation_prompt else "")


# ----------------------------------------------------------------------------------------------------------------------
# A Hugging Face model's own chat template


@functools.cache
def _compiled(template: str):
    """The template in the environment transformers renders chat templates in (sandboxed, trim_blocks and
    lstrip_blocks, loop controls, `raise_exception`, `tojson`). `strftime_now` is left undefined: a rendered chat
    must not depend on the day it was tokenized (Llama 3's template then falls back to its fixed date)."""
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def template_text(messages: Sequence[dict], tokenizer, add_generation_prompt: bool = False) -> str:
    """The tokenizer's chat template rendered for `messages` (the text transformers' apply_chat_template gives)."""
    from jinja2 import TemplateError

    try:
        return _compiled(tokenizer.chat_template).render(messages=list(messages),
                                                         add_generation_prompt=add_generation_prompt,
                                                         **tokenizer.template_vars)
    except TemplateError as e:
        raise ValueError(f"the chat template of {tokenizer.name} refuses this conversation: {e}") from None


def _render_template(messages: Sequence[dict], tokenizer, add_generation_prompt: bool) -> tuple[list[int], list[int]]:
    text = template_text(messages, tokenizer, add_generation_prompt)
    spans = []  # character spans of the assistant turns in `text`
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = template_text(messages[:i], tokenizer, add_generation_prompt=True) if i else ""
        upto = template_text(messages[:i + 1], tokenizer)
        if not (upto.startswith(before) and text.startswith(upto)):
            raise ValueError(f"the chat template of {tokenizer.name} renders earlier turns differently once later "
                             "turns follow, so the assistant's tokens cannot be told apart for the SFT loss mask; "
                             "use a template whose rendering of a conversation extends that of its beginning")
        spans.append((len(before), len(upto)))
    enc = tokenizer.hf.encode(text, add_special_tokens=False)  # special strings of the template are special here
    ids = list(enc.ids)
    mask = [int(any(a <= start < b for a, b in spans)) for start, _ in enc.offsets]
    if not ids or ids[0] != tokenizer.bos_id:
        ids, mask = [tokenizer.bos_id] + ids, [0] + mask
    return ids, mask
