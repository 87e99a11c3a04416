"""Does the chat model answer right? Two measures, by what the SFT data offers:

- built-in world: held-out questions (a story and a question, or a fact stated then asked back) generated with a seed
  the SFT chats do not use; a reply is right when it names every entity of the reference answer and no value that
  contradicts it (another colour, another pet name, ...). `accuracy` overall and by question kind.
- any other SFT source: the held-out conversations' assistant-token loss (the SFT objective) and, since each ends
  with an assistant reply, the exact match of the greedy reply with it.
Replies are greedy (temperature 0), so the score is a property of the model, not of a sampling seed.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch

from llm_core.data import chat
from llm_core.evaluation.metrics import TokenMetrics
from llm_core.inference.engine import Engine, Request, run_batch
from llm_core.inference.generate import SamplingParams

_WORD = re.compile(r"[A-Za-z]+")


def is_right(reply: str, required: list[str], wrong: list[str]) -> bool:
    words = {w.lower() for w in _WORD.findall(reply)}
    return all(r.lower() in words for r in required) and not any(w.lower() in words for w in wrong)


def _replies(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, max_batch: int = 32) -> list[str]:
    """Greedy replies to every conversation, decoded together; a reply ends at any chat marker. A question longer
    than the context keeps its most recent tokens (the engine's rolling window), as a chat would."""
    engine = Engine(model, max_batch=max_batch, special_ids=tokenizer.special_ids.values(), bos_id=tokenizer.bos_id,
                    vocab_size=tokenizer.vocab_size)
    stops = sorted(set(tokenizer.special_ids.values()) | {tokenizer.end_id, tokenizer.bos_id})
    greedy = SamplingParams(max_new_tokens, temperature=0.0)
    requests = [Request(chat.render(m, tokenizer, add_generation_prompt=True)[0], greedy, stops)
                for m in conversations]
    return [tokenizer.decode(r.tokens).strip() for r in run_batch(engine, requests)]


@torch.no_grad()
def score_world(model, tokenizer, items: list[dict], max_new_tokens: int = 32) -> tuple[dict, list[dict]]:
    """Accuracy on graded items (synthetic_chat.generate_chat_eval); also the replies, for inspection."""
    right: dict[str, list[int]] = defaultdict(list)
    replies = []
    for item, reply in zip(items, _replies(model, tokenizer, [it["messages"] for it in items], max_new_tokens)):
        ok = is_right(reply, item["required"], item["wrong"])
        right[item["kind"]].append(int(ok))
        replies.append({"kind": item["kind"], "question": item["messages"][-1]["content"], "reply": reply,
                        "reference": item["reference"], "right": ok})
    total = [x for v in right.values() for x in v]
    metrics = {"accuracy": sum(total) / max(len(total), 1), "num_items": len(total)}
    metrics.update({f"accuracy_{kind}": sum(v) / len(v) for kind, v in sorted(right.items())})
    return metrics, replies


@torch.no_grad()
def score_reference(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 64) -> tuple[dict, list]:
    """Assistant-token loss over whole held-out conversations, and exact match of the greedy final reply."""
    device = next(model.parameters()).device
    token_bytes = torch.tensor(tokenizer.token_bytes(), device=device)
    metrics = TokenMetrics(device, token_bytes)
    for messages in conversations:
        ids, mask = chat.render(messages, tokenizer)
        ids, mask = ids[:model.cfg.max_seq_len + 1], mask[:model.cfg.max_seq_len + 1]
        x = torch.tensor([ids[:-1]], device=device)
        y = torch.tensor([[t if m else -1 for t, m in zip(ids[1:], mask[1:])]], device=device)
        metrics.add(model(x), y)
    answered = [m for m in conversations if m[-1]["role"] == "assistant" and len(m) > 1]
    exact, replies = [], []
    for messages, reply in zip(answered, _replies(model, tokenizer, [m[:-1] for m in answered], max_new_tokens)):
        exact.append(int(reply == messages[-1]["content"].strip()))
        replies.append({"question": messages[-2]["content"], "reply": reply, "reference": messages[-1]["content"],
                        "right": bool(exact[-1])})
    result = {f"assistant_{k}": v for k, v in metrics.result().items()}
    result["num_items"] = len(conversations)
    if exact:
        result["exact_match"] = sum(exact) / len(exact)
    return result, replies
