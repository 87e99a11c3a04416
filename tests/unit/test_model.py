import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llm_core.config import PRESETS, ModelConfig
from llm_core.inference.generate import SamplingParams, generate
from llm_core.model.transformer import KVCache, Transformer, apply_rope, rope_tables
from tests.helpers import decode_in_pieces, tiny_model_config

GPT2_VOCAB = 50257


def on_meta(cfg: ModelConfig) -> Transformer:
    # shapes without memory or init cost: a 1.3B model builds in a second
    with torch.device("meta"):
        return Transformer(cfg)


def test_shapes_and_param_count():
    cfg = tiny_model_config()
    model = Transformer(cfg)
    logits = model(torch.randint(0, 512, (2, 10)))
    assert logits.shape == (2, 10, 512)
    assert model.num_params() == cfg.num_params()
    assert model.lm_head.weight is model.tok_emb.weight


def test_untied_and_qk_norm_counts():
    cfg = tiny_model_config(tie_embeddings=False, qk_norm=True, n_kv_heads=1)
    model = Transformer(cfg)
    assert model.num_params() == cfg.num_params()
    assert model.lm_head.weight is not model.tok_emb.weight


def test_imported_options_count_and_decode():
    # biases (Qwen2's q/k/v; Llama's attention_bias + mlp_bias) and Llama 3's RoPE scaling: off by default, and when
    # on, counted by the config and consistent between the full pass and the KV cache
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8}
    for kw in (dict(qkv_bias=True), dict(qkv_bias=True, out_bias=True, mlp_bias=True), dict(rope_scaling=llama3)):
        cfg = tiny_model_config(tie_embeddings=False, **kw)
        model = Transformer(cfg).eval()
        assert model.num_params() == cfg.num_params()
        x = torch.randint(0, 512, (2, 20))
        pieces, _ = decode_in_pieces(model, x)
        torch.testing.assert_close(pieces, model(x), atol=1e-5, rtol=1e-5)
    assert not any(n.endswith(".bias") for n, _ in Transformer(tiny_model_config()).named_parameters())
    # wavelengths under original_max_position_embeddings / high_freq_factor (here 16) are kept, longer ones change
    scaled = rope_tables(32, 64, 10000.0, dict(llama3, original_max_position_embeddings=64))
    plain = rope_tables(32, 64, 10000.0)
    assert torch.equal(scaled[0][:, :2], plain[0][:, :2]) and not torch.equal(scaled[0][:, 2:], plain[0][:, 2:])


def test_residual_projections_are_scaled():
    model = Transformer(tiny_model_config(n_layers=8))
    assert model.layers[0].attn.wo.weight.std() < 0.5 * model.layers[0].attn.wq.weight.std()


def test_causality():
    model = Transformer(tiny_model_config())
    x = torch.randint(0, 512, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 512
    assert torch.allclose(model(x)[0, :8], model(y)[0, :8], atol=1e-6)


def test_rope_is_a_rotation_with_relative_positions():
    cos, sin = rope_tables(8, 32, 10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    def at(x, p):
        return apply_rope(x, cos[p:p + 1], sin[p:p + 1])
    assert torch.allclose(at(q, 5).norm(), q.norm(), atol=1e-5)
    # the score depends on the distance only
    assert torch.allclose((at(q, 7) * at(k, 3)).sum(), (at(q, 14) * at(k, 10)).sum(), atol=1e-5)


@pytest.mark.parametrize("kw", [dict(attention="sdpa"), dict(attention="naive"), dict(attention_type="mla")],
                         ids=["sdpa", "naive", "mla"])
def test_document_mask_reads_each_packed_document_alone(kw):
    """A row packing three documents gives every document the logits it gets as a row of its own: no attention
    crosses a document bound, and RoPE (relative positions) does not care where in the row a document starts."""
    model = Transformer(tiny_model_config(**kw)).eval()
    lengths = [7, 12, 5]
    parts = [torch.randint(0, 512, (1, n)) for n in lengths]
    docs = torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], dim=1)
    packed = model(torch.cat(parts, dim=1), docs=docs)
    alone = torch.cat([model(p) for p in parts], dim=1)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model(torch.cat(parts, dim=1))[:, 7:], alone[:, 7:], atol=1e-3)  # unmasked: it leaks
    with pytest.raises(ValueError, match="without a KV cache"):
        model(parts[0], cache=KVCache.empty(model.cfg, 1, 16, "cpu", torch.float32), docs=docs[:, :7])


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
@pytest.mark.parametrize("kv", [4, 2, 1])  # MHA, GQA, MQA
def test_kv_cache_matches_full_forward(backend, kv):
    model = Transformer(tiny_model_config(n_kv_heads=kv, attention=backend)).eval()
    x = torch.randint(0, 512, (2, 20))
    full = model(x)
    cached, cache = decode_in_pieces(model, x)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_too_long_sequence_is_a_clear_error():
    model = Transformer(tiny_model_config())
    try:
        model(torch.zeros(1, 65, dtype=torch.long))
    except ValueError as e:
        assert "max_seq_len" in str(e)
    else:
        raise AssertionError("expected ValueError")


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("vocab", [GPT2_VOCAB, 2048])
def test_num_params_formula_equals_the_module_for_every_preset(name, vocab):
    cfg = ModelConfig(preset=name).resolved(vocab)
    model = on_meta(cfg)
    assert model.num_params() == cfg.num_params()
    for variant in (dict(tie_embeddings=not cfg.tie_embeddings), dict(qk_norm=True)):
        other = ModelConfig(preset=name, **variant).resolved(vocab)
        assert on_meta(other).num_params() == other.num_params()


@pytest.mark.parametrize("name,size", [("124m", 124e6), ("350m", 350e6), ("774m", 774e6), ("1.3b", 1.3e9)])
def test_presets_are_the_size_they_are_named(name, size):
    n = ModelConfig(preset=name).resolved(GPT2_VOCAB).num_params()
    assert abs(n - size) / size < 0.03, f"{name}: {n / 1e6:.1f}M parameters"


def test_tiny_preset_shape_is_unchanged():
    # the default CPU run is tuned on this shape
    cfg = ModelConfig().resolved(2048)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_hidden, cfg.max_seq_len) == (
        4, 128, 4, 2, 384, 256)
    assert cfg.init_std == 0.02 and cfg.tie_embeddings and not cfg.qk_norm


@pytest.mark.parametrize("name,seq", [("tiny", 256), ("124m", 1024), ("350m", 512)])
def test_flops_per_token_equals_a_flop_counter(name, seq):
    # the naive backend computes the full score matrix with plain matmuls, which is what 6N + 12LDT counts
    cfg = ModelConfig(preset=name, attention="naive").resolved(GPT2_VOCAB)
    model = on_meta(cfg)
    x = torch.zeros(2, seq, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    assert counter.get_total_flops() == 2 * seq * cfg.flops_per_token(seq)
    n = cfg.num_params(embeddings=False) + (cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0)
    assert cfg.flops_per_token(seq) == pytest.approx(6 * n + 12 * cfg.n_layers * cfg.d_model * seq, rel=1e-3)


def test_init_std_is_used():
    small = Transformer(tiny_model_config(init_std=0.005))
    assert 0.004 < small.tok_emb.weight.std() < 0.006
    assert 0.005 / 2 / 1.2 < small.layers[0].ffn.w2.weight.std() < 0.005 / 2 * 1.2  # 1/sqrt(2 * 2 layers)


def test_config_without_init_std_still_builds():
    cfg = tiny_model_config()
    cfg.init_std = None  # a config.json saved before the key existed
    Transformer(cfg)


def _triton_usable() -> str:
    try:
        import llm_core.model.attention.flash  # noqa: F401
    except ImportError:
        return "triton is not installed"
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return "no CUDA and TRITON_INTERPRET is not 1"
    return ""


@pytest.mark.skipif(bool(_triton_usable()), reason=_triton_usable() or "ok")
def test_triton_backend_decodes_like_sdpa():
    # head_dim 32: the smallest the kernel supports; on CPU it runs in Triton's interpreter
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = tiny_model_config(d_model=64, n_heads=2, n_kv_heads=1)
    ref = Transformer(cfg).to(device).eval()
    ours = Transformer(tiny_model_config(d_model=64, n_heads=2, n_kv_heads=1, attention="triton")).to(device).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randint(0, 512, (1, 9), device=device)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    out_ref, _ = generate(ref, x[0].tolist(), greedy)
    out_ours, _ = generate(ours, x[0].tolist(), greedy)
    assert out_ours == out_ref and len(out_ref) == 8
