"""Per-layer overrides, activation recomputation and dropout at the model level."""

import pytest
import torch

from llm_core.config import ModelConfig, ParamsError, load_params
from llm_core.model.mla import MLA
from llm_core.model.moe import MoE
from llm_core.model.transformer import Attention, KVCache, Transformer
from llm_core.training.recompute import apply_activation_checkpointing
from tests.helpers import tiny_model_config

MIX = [{}, {"attention_type": "mla", "kv_lora_rank": 16}, {"ffn": "moe", "n_kv_heads": 1},
       {"attention_type": "mla", "ffn": "moe", "n_experts": 6, "top_k": 3}]


def mixed(**kw):
    return tiny_model_config(n_layers=4, layers=MIX, n_experts=4, expert_hidden=32, **kw)


def test_layers_build_the_blocks_they_name_and_decode_with_a_cache():
    model = Transformer(mixed()).eval()
    kinds = [(type(b.attn), type(b.ffn).__name__) for b in model.layers]
    assert kinds == [(Attention, "FeedForward"), (MLA, "FeedForward"), (Attention, "MoE"), (MLA, "MoE")]
    assert model.layers[2].attn.n_kv_heads == 1 and model.layers[3].ffn.n_experts == 6
    assert model.num_params() == model.cfg.num_params()
    x = torch.randint(0, 512, (2, 12))
    full = model(x)
    cache = KVCache.empty(model.cfg, 2, 12, "cpu", torch.float32)
    steps = torch.cat([model(x[:, :5], cache)] + [model(x[:, i:i + 1], cache) for i in range(5, 12)], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_first_dense_layers_keeps_the_first_blocks_dense():
    cfg = tiny_model_config(n_layers=3, ffn="moe", first_dense_layers=2)
    assert [cfg.layer(i).ffn for i in range(3)] == ["dense", "dense", "moe"]


@pytest.mark.parametrize("layers,match", [
    ([{}, {"n_kv_heads": 3}], r"model\.n_heads \(4\) must be divisible by model\.layers\[1\]\.n_kv_heads \(3\)"),
    ([{"ffn": "moe", "top_k": 9}, {}], r"model\.layers\[0\]\.top_k \(9\) must be <= model\.n_experts \(layer 0\)"),
    ([{}, {"attention_type": "mqa"}], r"model\.layers\[1\]\.attention_type must be one of gqa, mla"),
    ([{}, {"attention_type": "mla", "qk_rope_head_dim": 5}], r"model\.layers\[1\]\.qk_rope_head_dim must be even"),
    ([{}], r"model\.layers has 1 entries but model\.n_layers is 2"),
])
def test_layer_errors_name_the_layer_and_the_key(layers, match):
    with pytest.raises(ParamsError, match=match):
        tiny_model_config(layers=layers)


def test_unknown_layer_key_is_named_with_its_index(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("model:\n  n_layers: 2\n  layers:\n    - {}\n    - {heads: 2}\n")
    with pytest.raises(ParamsError, match=r"unknown key model\.layers\[1\]\.heads"):
        load_params(p)


def test_config_json_round_trip_keeps_the_layers():
    cfg = mixed()
    again = ModelConfig(**cfg.to_dict())
    assert again.layer(3).attention_type == "mla" and again.layer(3).n_experts == 6
    assert again.num_params() == cfg.num_params()


@pytest.mark.parametrize("mode", ["full", "every_k"])
def test_recomputation_gives_the_gradients_of_none(mode):
    cfg = mixed(dropout=0.1)  # dropout: the replay must draw the same masks
    ref, ckpt = Transformer(cfg).train(), Transformer(cfg).train()
    ckpt.load_state_dict(ref.state_dict())
    assert apply_activation_checkpointing(ckpt, mode, every=2) == (4 if mode == "full" else 2)
    x = torch.randint(0, 512, (2, 16))
    for model in (ref, ckpt):
        torch.manual_seed(3)
        model(x).logsumexp(-1).mean().backward()
    for (name, a), (_, b) in zip(ref.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)
    assert list(ref.state_dict()) == list(ckpt.state_dict())  # names (and so checkpoints) unchanged


def test_dropout_is_active_in_training_only():
    model = Transformer(tiny_model_config(dropout=0.5))
    x = torch.randint(0, 512, (1, 8))
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    assert not any(isinstance(m, torch.nn.Dropout) for m in Transformer(tiny_model_config()).modules())
    assert isinstance(Transformer(mixed()).layers[2].ffn, MoE)


def test_recomputation_composes_with_compile():
    # aot_eager traces through dynamo and AOT autograd (what inductor consumes) without needing a C++ compiler
    cfg = tiny_model_config(attention_type="mla", ffn="moe", n_experts=4, expert_hidden=32, moe_path="loop")
    ref, ckpt = Transformer(cfg).train(), Transformer(cfg).train()
    ckpt.load_state_dict(ref.state_dict())
    apply_activation_checkpointing(ckpt, "full")
    compiled = torch.compile(ckpt, backend="aot_eager")
    x = torch.randint(0, 512, (2, 16))
    ref(x).logsumexp(-1).mean().backward()
    compiled(x).logsumexp(-1).mean().backward()
    for (name, a), (_, b) in zip(ref.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)
    assert torch.equal(ref.take_expert_load(), ckpt.take_expert_load())  # tokens counted once
