"""Conversation rendering and assistant-only loss masks.

The format, also saved as the Jinja `chat_template` in tokenizer_config.json (tests check both agree):
    <|bos|><|user|>...<|end|><|assistant|>...<|end|>
Only the assistant's own tokens (its content and the closing <|end|>) are learned: the model is never trained to
write the user's turn, so it answers instead of continuing the prompt.
"""

from __future__ import annotations

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
