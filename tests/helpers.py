"""Small builders shared by tests."""

from llm_core.config import ModelConfig


def tiny_model_config(vocab_size: int = 512, **overrides) -> ModelConfig:
    base = dict(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=64)
    base.update(overrides)
    return ModelConfig(preset="tiny", **base).resolved(vocab_size)
