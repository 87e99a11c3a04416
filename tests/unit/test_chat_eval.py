"""Chat evaluation: held-out graded questions from the built-in world and the verdict on a reply."""

import pytest
import torch

from llm_core.data import synthetic_chat
from llm_core.evaluation import chat as chat_eval
from llm_core.model.transformer import Transformer
from tests.helpers import tiny_model_config


def test_a_reply_is_right_when_it_names_the_answer_and_nothing_contradicting():
    required, wrong = ["Rex", "dog"], ["Max", "cat", "Spot"]
    assert chat_eval.is_right("Your dog is called Rex.", required, wrong)
    assert not chat_eval.is_right("Your cat is called Rex.", required, wrong)  # the name right, the species wrong
    assert not chat_eval.is_right("Your dog is called Max.", required, wrong)
    assert not chat_eval.is_right("Your dog is called Rex or Max.", required, wrong)
    assert not chat_eval.is_right("", required, wrong)
    assert chat_eval.is_right("YOUR DOG IS CALLED REX", required, wrong)  # words, not case


def test_eval_items_are_held_out_graded_and_cover_every_kind():
    items = synthetic_chat.generate_chat_eval(99, 45)
    assert items == synthetic_chat.generate_chat_eval(99, 45)  # seeded
    kinds = {it["kind"] for it in items}
    assert kinds == {"color", "object", "pet", "animal", "place", "friend", "hero", "stated_pet", "stated_color",
                     "followup_new", "followup_earlier"}
    for it in items:
        # the reference answer itself is right, and every required word is in the question
        assert chat_eval.is_right(it["reference"], it["required"], it["wrong"]), it
        assert not set(it["required"]) & set(it["wrong"])
        words = set(chat_eval._WORD.findall(" ".join(m["content"] for m in it["messages"] if m["role"] == "user")))
        assert set(it["required"]) <= words, it
        assert it["messages"][-1]["role"] == "user"
    sft_questions = {m["content"] for conv in synthetic_chat.generate_chats(100, 600) for m in conv if m["role"] == "user"}
    assert not sft_questions & {it["messages"][-1]["content"] for it in items if it["kind"] in ("color", "pet")}


def test_score_world_counts_right_replies_by_kind(monkeypatch):
    items = synthetic_chat.generate_chat_eval(3, 18)
    answers = [it["reference"] if i % 3 else "I do not know." for i, it in enumerate(items)]
    monkeypatch.setattr(chat_eval, "_replies", lambda *a, **k: answers)
    metrics, replies = chat_eval.score_world(None, None, items)
    assert metrics["num_items"] == 18 and metrics["accuracy"] == pytest.approx(12 / 18)
    assert sum(r["right"] for r in replies) == 12
    assert {k for k in metrics if k.startswith("accuracy_")} == {f"accuracy_{it['kind']}" for it in items}


def test_batched_replies_equal_one_at_a_time_greedy(tokenizer):
    from llm_core.data import chat
    from llm_core.inference.generate import SamplingParams, generate

    torch.manual_seed(0)
    model = Transformer(tiny_model_config(vocab_size=tokenizer.vocab_size)).eval()
    convs = [it["messages"] for it in synthetic_chat.generate_chat_eval(4, 5)]
    convs = [[{"role": "user", "content": m[0]["content"][-60:]}] for m in convs]  # within the tiny context
    batched = chat_eval._replies(model, tokenizer, convs, max_new_tokens=6, max_batch=4)
    stops = sorted(set(tokenizer.special_ids.values()))
    single = [tokenizer.decode(generate(model, chat.render(m, tokenizer, add_generation_prompt=True)[0],
                                        SamplingParams(6, temperature=0.0), stop_ids=stops)[0]).strip()
              for m in convs]
    assert batched == single


def test_score_reference_on_a_real_model(tokenizer):
    model = Transformer(tiny_model_config(vocab_size=tokenizer.vocab_size)).eval()
    convs = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]] * 2
    metrics, replies = chat_eval.score_reference(model, tokenizer, convs, max_new_tokens=4)
    assert metrics["num_items"] == 2 and metrics["assistant_loss"] > 0 and metrics["exact_match"] == 0.0
    assert len(replies) == 2
