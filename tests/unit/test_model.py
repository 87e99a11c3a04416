import torch

from llm_core.model import KVCache, Transformer, apply_rope, rope_tables
from tests.helpers import tiny_model_config


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


def test_kv_cache_matches_full_forward():
    for kv in (4, 2, 1):  # MHA, GQA, MQA
        model = Transformer(tiny_model_config(n_kv_heads=kv)).eval()
        x = torch.randint(0, 512, (2, 20))
        full = model(x)
        cache = KVCache.empty(model.cfg, 2, 20, "cpu", torch.float32)
        pieces = [model(x[:, :7], cache)]  # prefill
        pieces += [model(x[:, i:i + 1], cache) for i in range(7, 15)]  # one-token decode
        pieces.append(model(x[:, 15:], cache))  # a chunk after decoding
        torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_too_long_sequence_is_a_clear_error():
    model = Transformer(tiny_model_config())
    try:
        model(torch.zeros(1, 65, dtype=torch.long))
    except ValueError as e:
        assert "max_seq_len" in str(e)
    else:
        raise AssertionError("expected ValueError")
