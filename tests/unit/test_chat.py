import pytest

from llm_core.data import chat

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What colour was the ball?"},
        {"role": "assistant", "content": "It was red."}]


def test_render_matches_template_string(tokenizer):
    ids, mask = chat.render(CONV, tokenizer)
    assert len(ids) == len(mask)
    assert tokenizer.hf.decode(ids, skip_special_tokens=False) == chat.render_text(CONV)


def test_mask_covers_exactly_the_assistant_reply_and_its_end(tokenizer):
    ids, mask = chat.render(CONV, tokenizer)
    learned = [i for i, m in zip(ids, mask) if m]
    assert learned == tokenizer.encode("It was red.") + [tokenizer.end_id]


def test_generation_prompt(tokenizer):
    ids, _ = chat.render(CONV[:2], tokenizer, add_generation_prompt=True)
    assert ids[-1] == tokenizer.special_ids["<|assistant|>"]


def test_jinja_template_agrees_with_python_rendering(tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    for conv, gen in ((CONV, False), (CONV[:2], True)):
        assert hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen) == \
            chat.render_text(conv, add_generation_prompt=gen)


def test_bad_role_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="role must be one of"):
        chat.render([{"role": "bot", "content": "x"}], tokenizer)
