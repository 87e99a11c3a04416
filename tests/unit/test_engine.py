"""The batched engine: equal to one-at-a-time decoding, per-row settings and stops, rolling window, UTF-8 stream; its
fused decode step equal to the model bit for bit, and one read from the device per step."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from llm_core.inference.engine import Engine, Request, run_batch
from llm_core.inference.fused import FusedDecoder
from llm_core.inference.generate import SamplingParams, generate, sample_rows
from llm_core.inference.text import TextStream
from llm_core.model.transformer import KVCache, Transformer
from tests.helpers import tiny_model_config

GREEDY = SamplingParams(max_new_tokens=16, temperature=0)


def _model(**over):
    torch.manual_seed(0)
    return Transformer(tiny_model_config(**over)).eval()


def _prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 500, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("arch", [{}, dict(attention_type="mla", kv_lora_rank=16, qk_rope_head_dim=8,
                                           qk_nope_head_dim=8, v_head_dim=16),
                                   dict(layers=[{"attention_type": "mla", "kv_lora_rank": 16}, {"ffn": "moe"}],
                                        n_experts=4, top_k=2, expert_hidden=32)],
                         ids=["gqa", "mla", "mla-then-moe"])
def test_batched_greedy_equals_one_at_a_time_with_mixed_lengths(arch):
    model = _model(**arch)
    prompts = _prompts([1, 5, 17, 3, 30, 9, 2])
    alone = [generate(model, p, GREEDY)[0] for p in prompts]
    # 3 rows for 7 requests: later ones join the running batch as earlier ones leave it
    results = run_batch(Engine(model, max_batch=3), [Request(p, GREEDY) for p in prompts])
    assert [r.tokens for r in results] == alone
    assert all(r.finish == "length" and r.rolled == 0 for r in results)


def test_stops_settings_and_seeds_are_per_row():
    model = _model()
    p1, p2, p3 = _prompts([4, 8, 6])
    varied = SamplingParams(max_new_tokens=16, temperature=0, repetition_penalty=2.0)  # no endless repeats
    first = generate(model, p1, varied)[0]
    cut = next(j for j in range(1, len(first)) if first[j] not in first[:j])  # a token not drawn before
    hot = SamplingParams(max_new_tokens=10, temperature=1.3, top_k=20, top_p=0.9, repetition_penalty=1.3)
    seeded_alone = run_batch(Engine(model, max_batch=1), [Request(p3, hot, seed=7)])[0].tokens
    results = run_batch(Engine(model, max_batch=4), [
        Request(p1, varied, stop_ids=[first[cut]]),  # stops there; the stop token is not emitted
        Request(p2, GREEDY),
        Request(p3, hot, seed=7),
    ])
    assert results[0].tokens == first[:cut] and results[0].finish == "stop"
    assert results[1].tokens == generate(model, p2, GREEDY)[0]  # a greedy row is untouched by its neighbours
    assert results[2].tokens == seeded_alone and results[2].finish == "length"


def test_rolling_window_continues_past_max_seq_len():
    model = _model(max_seq_len=32)
    long_prompt = _prompts([50])[0]
    params = SamplingParams(max_new_tokens=70, temperature=0)
    results = run_batch(Engine(model, max_batch=2, bos_id=long_prompt[0]),
                        [Request(long_prompt, params), Request(_prompts([3])[0], params)])
    for r in results:
        assert len(r.tokens) == 70 and r.finish == "length" and r.rolled > 0
    # up to the first roll the windowed row decodes exactly like a fresh sequence of its window
    engine = Engine(model, max_batch=1, bos_id=long_prompt[0])
    kept = engine._window(long_prompt, engine._room())
    assert kept[0] == long_prompt[0] and kept[1:] == long_prompt[-(len(kept) - 1):]
    ref = generate(model, kept, SamplingParams(max_new_tokens=32 - len(kept), temperature=0))[0]
    assert results[0].tokens[:len(ref)] == ref


def test_special_tokens_are_never_penalised():
    logits = torch.tensor([[2.0, 2.0, -1.0]])
    seen = torch.tensor([[True, False, True]])
    one = torch.ones(1)
    out = sample_rows(logits, seen, torch.zeros(1), torch.zeros(1, dtype=torch.long), one, one * 4, [None])
    assert out.tolist() == [1]  # token 0 was seen: 2.0 / 4 loses to token 1
    model = _model()
    engine = Engine(model, max_batch=2, special_ids=[500, 501])
    engine.submit(Request([500, 7, 501, 8], SamplingParams(max_new_tokens=2, repetition_penalty=1.5)))
    engine.step()
    assert engine.seen[0, [7, 8]].all() and not engine.seen[0, [500, 501]].any()


def test_cancel_frees_the_row_and_others_continue():
    model = _model()
    engine = Engine(model, max_batch=2)
    a = engine.submit(Request(_prompts([5])[0], GREEDY))
    b = engine.submit(Request(_prompts([6], seed=2)[0], GREEDY))
    engine.step()
    engine.cancel(a)
    rest = []
    while engine.has_work():
        rest += [e for e in engine.step()]
    assert {e.rid for e in rest} == {b} and engine.active == 0


def test_text_stream_never_emits_half_a_character(tokenizer):
    stream = TextStream(tokenizer)
    e_acute = "é".encode()  # two bytes; byte-level ids equal byte values
    assert stream.push(e_acute[0]) == ""
    assert stream.push(e_acute[1]) == "é"
    assert stream.push(tokenizer.end_id) == ""  # special tokens are not text
    assert stream.push("€".encode()[0]) == "" and stream.flush() == "\ufffd"
    ids = tokenizer.encode("naïve café ☕ done")
    stream = TextStream(tokenizer)
    assert "".join(stream.push(i) for i in ids) + stream.flush() == "naïve café ☕ done"


def test_ids_past_the_tokenizer_are_never_drawn(tokenizer):
    model = _model()  # vocabulary 512; pretend the tokenizer knows only 300 ids
    hot = SamplingParams(max_new_tokens=40, temperature=2.0)
    results = run_batch(Engine(model, max_batch=2, vocab_size=300), [Request([1, 2], hot, seed=s) for s in (1, 2)])
    assert all(0 <= t < 300 for r in results for t in r.tokens)
    assert TextStream(tokenizer).push(10**6) == ""  # an unknown id has no text rather than failing the stream


def test_batched_draws_follow_top_k_top_p_and_the_probabilities():
    probs = torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05])
    n = 2000
    logits = probs.log().expand(n, 5).clone()
    g = torch.Generator().manual_seed(0)
    ones, unseen = torch.ones(n), torch.zeros(n, 5, dtype=torch.bool)

    def draw(k, p):
        return sample_rows(logits, unseen, ones, torch.full((n,), k), torch.full((n,), p), ones,
                           [g] * n)

    freq = torch.bincount(draw(3, 1.0), minlength=5).float() / n  # top-3: renormalised 0.45 / 0.25 / 0.15
    assert torch.allclose(freq, torch.tensor([0.45, 0.25, 0.15, 0, 0]) / 0.85, atol=0.04)
    assert set(draw(0, 0.6).tolist()) == {0, 1}  # the nucleus that reaches 0.6


# ----------------------------------------------------------------------------------------------------------------------
# the fused decode step and the host syncs of a step


def _ragged_cache(model, lengths, dtype=torch.float32):
    """A ragged cache whose rows hold `lengths` positions of random prompts, filled by the model itself."""
    cache = KVCache.empty(model.cfg, len(lengths), model.cfg.max_seq_len, "cpu", dtype, ragged=True)
    for b, n in enumerate(lengths):
        model(torch.tensor([_prompts([n], seed=b)[0]]), cache.rows(b, b + 1))
    return cache


@pytest.mark.parametrize("arch", [{}, dict(qk_norm=True), dict(n_kv_heads=4), dict(n_kv_heads=1)],
                         ids=["gqa", "qk-norm", "mha", "mqa"])
@pytest.mark.parametrize("lengths", [[5, 17, 1, 9], [7, 7, 7], [3, 9, 1, 12, 5, 7, 2, 11] * 2],
                         ids=["ragged", "in-step", "16-rows"])  # 16 rows x 4 heads: attention by bmm
def test_fused_step_equals_the_model_bit_for_bit(arch, lengths):
    model = _model(**arch)
    tokens = torch.tensor(_prompts([len(lengths)], seed=9)[0])
    ref_cache, cache = _ragged_cache(model, lengths), _ragged_cache(model, lengths)
    with torch.inference_mode():
        ref = model(tokens[:, None], ref_cache)[:, -1]  # the model's own ragged path
    got = FusedDecoder(model)(tokens, cache, list(lengths))
    assert torch.equal(got, ref)  # same ops where rounding could differ: the same bits
    assert cache.lengths.tolist() == [n + 1 for n in lengths]
    for (k1, v1), (k2, v2) in zip(ref_cache.layers, cache.layers):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_fused_step_in_bf16_follows_the_model():
    model = _model().to(torch.bfloat16)
    lengths = [5, 17, 3]
    tokens = torch.tensor(_prompts([3], seed=9)[0])
    ref_cache, cache = _ragged_cache(model, lengths, torch.bfloat16), _ragged_cache(model, lengths, torch.bfloat16)
    with torch.inference_mode():
        ref = model(tokens[:, None], ref_cache)[:, -1]
    got = FusedDecoder(model)(tokens, cache, lengths)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref.float(), atol=0.05, rtol=0.02)


def test_latent_attention_and_experts_keep_the_models_forward():
    mla = _model(attention_type="mla", kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)
    moe = _model(ffn="moe", n_experts=4, top_k=2, expert_hidden=32)
    assert Engine(mla).decoder is None and Engine(moe).decoder is None and Engine(_model()).decoder is not None


class _HostSyncs(TorchFunctionMode):
    """Counts the tensor calls that make the host wait for the device (on CUDA): reading values back."""

    READS = {"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_a_decode_step_reads_from_the_device_once():
    engine = Engine(_model(), max_batch=4)
    hot = SamplingParams(max_new_tokens=12, temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.2)
    for p, params in zip(_prompts([3, 8, 5, 12]), (GREEDY, hot, GREEDY, hot)):
        engine.submit(Request(p, params, seed=3))
    engine.step()  # admission: prompts prefilled (not a decode step)
    counts = []
    while engine.has_work():
        with _HostSyncs() as syncs:
            engine.step()
        counts.append(syncs.count)
    assert len(counts) >= 10 and max(counts) == 1, counts  # the drawn tokens, once per step

    with _HostSyncs() as syncs:  # the counter sees what it must: a width left to sample_rows is read back
        sample_rows(engine.logits[:2], engine.seen[:2], torch.ones(2), torch.full((2,), 5), torch.ones(2),
                    torch.ones(2), [None, None], hot=[0, 1], penalise=False)
    assert syncs.count == 1
