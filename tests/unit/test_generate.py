import torch

from llm_core.inference.generate import SamplingParams, apply_repetition_penalty, filter_logits, generate, sample_next
from llm_core.model.transformer import Transformer
from tests.helpers import tiny_model_config


def test_top_k_keeps_k():
    logits = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0])
    out = filter_logits(logits, top_k=2, top_p=1.0)
    assert torch.isfinite(out).tolist() == [False, True, False, True, False]


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    out = filter_logits(probs.log(), top_k=0, top_p=0.75)
    assert torch.isfinite(out).tolist() == [True, True, False, False]
    # the best token always survives, however small top_p
    assert torch.isfinite(filter_logits(probs.log(), 0, 0.01)).tolist() == [True, False, False, False]


def test_repetition_penalty_matches_hf_semantics():
    logits = torch.tensor([2.0, -2.0, 1.0])
    out = apply_repetition_penalty(logits, torch.tensor([0, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]


def test_greedy_is_argmax_and_sampling_is_seeded():
    logits = torch.tensor([0.1, 3.0, 0.2])
    assert sample_next(logits, SamplingParams(temperature=0), torch.empty(0, dtype=torch.long)) == 1
    p = SamplingParams(temperature=1.0)
    draws = lambda: [sample_next(torch.zeros(50), p, torch.empty(0, dtype=torch.long),  # noqa: E731
                                 torch.Generator().manual_seed(3)) for _ in range(5)]
    assert draws() == draws()


def test_kv_cache_generation_equals_full_recompute():
    model = Transformer(tiny_model_config()).eval()
    prompt = [1, 2, 3, 4]
    out, stats = generate(model, prompt, SamplingParams(max_new_tokens=12, temperature=0))
    seq = list(prompt)
    for _ in range(12):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert out == seq[4:] and stats["tokens"] == 12


def test_stop_token_ends_generation():
    model = Transformer(tiny_model_config()).eval()
    first, _ = generate(model, [1, 2], SamplingParams(max_new_tokens=5, temperature=0))
    out, _ = generate(model, [1, 2], SamplingParams(max_new_tokens=5, temperature=0), stop_ids=[first[0]])
    assert out == []
