"""Multi-head latent attention: cache decoding equals the full pass, the cache is the latent, counts are exact."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llm_core.config import ParamsError
from llm_core.model.mla import MLA
from llm_core.model.transformer import KVCache, Transformer
from tests.helpers import decode_in_pieces, tiny_model_config

MLA_KEYS = dict(attention_type="mla", kv_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12)


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
@pytest.mark.parametrize("q_lora_rank", [0, 32])
def test_mla_cache_decoding_equals_full_forward(backend, q_lora_rank):
    model = Transformer(tiny_model_config(attention=backend, q_lora_rank=q_lora_rank, **MLA_KEYS)).eval()
    assert all(isinstance(b.attn, MLA) for b in model.layers)
    x = torch.randint(0, 512, (2, 20))
    full = model(x)
    cached, cache = decode_in_pieces(model, x)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    # the cache holds the latent and the shared rotary key, not per-head keys and values
    latent, rope = cache.layers[0]
    assert latent.shape == (2, 20, 24) and rope.shape == (2, 20, 8)


def test_mla_cache_is_smaller_than_gqa_at_the_same_width():
    gqa = tiny_model_config(n_heads=4, n_kv_heads=2)  # head dim 16
    mla = tiny_model_config(n_heads=4, attention_type="mla")  # derived: latent 32, rope 8
    assert mla.kv_cache_bytes_per_token() < gqa.kv_cache_bytes_per_token()
    assert mla.kv_cache_bytes_per_token(as_gqa=True) == gqa.kv_cache_bytes_per_token()
    # and the real cache tensors agree with the figure the summary reports
    for cfg in (gqa, mla):
        cache = KVCache.empty(cfg, 1, 10, "cpu", torch.bfloat16)
        assert cache.num_bytes() == 10 * cfg.kv_cache_bytes_per_token()
    assert "160 bytes/token (bf16) vs 256 as GQA" in mla.summary()  # 2 x (32 + 8) x 2 B vs 2 x 2 x 2 x 16 x 2 B


def test_mla_num_params_and_flops_equal_the_module():
    cfg = tiny_model_config(attention="naive", q_lora_rank=32, **MLA_KEYS)
    model = Transformer(cfg)
    assert model.num_params() == cfg.num_params() == cfg.num_params(active=True)
    seq = 16
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(2, seq, dtype=torch.long)).sum().backward()
    assert counter.get_total_flops() == 2 * seq * cfg.flops_per_token(seq)


def test_mla_triton_needs_equal_widths_and_names_the_keys():
    with pytest.raises(ParamsError, match=r"model\.attention=triton needs model\.qk_nope_head_dim .*"
                                          r"model\.v_head_dim"):
        tiny_model_config(attention="triton", **MLA_KEYS)
    tiny_model_config(attention="triton", attention_type="mla", qk_nope_head_dim=24, qk_rope_head_dim=8,
                      v_head_dim=32)  # 24 + 8 == 32: allowed


def test_mla_rejects_qk_norm():
    with pytest.raises(ParamsError, match=r"model\.qk_norm applies to gqa"):
        tiny_model_config(attention_type="mla", qk_norm=True)
