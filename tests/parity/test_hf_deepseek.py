"""Export of latent-attention / mixture-of-experts models to Hugging Face DeepSeek-V3: transformers'
DeepseekV3ForCausalLM, loading the exported folder, gives our logits; combinations it cannot express are refused."""

import json

import pytest
import torch

from llm_core import export
from llm_core.model.transformer import Transformer
from tests.helpers import tiny_model_config

transformers = pytest.importorskip("transformers")
MLA = dict(attention_type="mla", kv_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12)
MOE = dict(ffn="moe", n_experts=4, top_k=2, expert_hidden=32, first_dense_layers=1)


def trained_looking(cfg) -> Transformer:
    """A model whose balancing biases are not zero (as after training), so the export must carry them."""
    model = Transformer(cfg).eval()
    for _, moe in model.moe_layers():
        moe.router.expert_bias.copy_(torch.randn(moe.n_experts) * 0.3)
    return model


@pytest.mark.parametrize("kw", [
    dict(MLA, **MOE, n_layers=3),
    dict(MLA, **MOE, n_layers=3, q_lora_rank=32, n_shared_experts=2, tie_embeddings=False),
    dict(MLA, n_layers=2),  # latent attention with dense feed-forwards
], ids=["mla-moe", "q-lora-untied", "mla-dense"])
def test_deepseek_v3_logits_match(tmp_path, kw):
    model = trained_looking(tiny_model_config(**kw))
    export.export_hf(model, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["DeepseekV3ForCausalLM"]
    hf = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert sum(p.numel() for p in hf.parameters()) == model.num_params()
    x = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)


def test_verify_command_on_a_deepseek_export(tmp_path, capsys):
    from llm_core.model.io import write_model

    write_model(tmp_path / "ours", trained_looking(tiny_model_config(**MLA, **MOE, n_layers=2)))
    export.main([str(tmp_path / "ours"), str(tmp_path / "hf"), "--verify"])
    assert "DeepseekV3ForCausalLM vs llm_core" in capsys.readouterr().out


@pytest.mark.parametrize("kw,match", [
    (dict(MOE), r"model\.attention_type=gqa \(block 0\) has no DeepSeek-V3 equivalent"),
    (dict(MLA, **MOE, score_func="softmax"), r"model\.score_func=softmax has no DeepSeek-V3 equivalent"),
    (dict(MLA, ffn="moe", n_experts=4, layers=[{}, {"ffn": "dense"}]),
     r"model\.layers\[1\]\.ffn=dense after a moe block"),
    (dict(MLA, layers=[{}, {"kv_lora_rank": 16}]), r"model\.layers\[1\]\.kv_lora_rank differs"),
    (dict(MLA, layers=[{}, {"attention_type": "gqa"}]), r"model\.layers\[1\]\.attention_type=gqa \(block 1\)"),
])
def test_combinations_without_an_equivalent_are_refused(tmp_path, kw, match):
    model = Transformer(tiny_model_config(**kw))
    with pytest.raises(ValueError, match=match):
        export.export_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
