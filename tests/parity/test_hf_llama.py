"""Our Transformer against Hugging Face's LlamaForCausalLM with the same weights (exported through llm_core.export)."""

import pytest
import torch

from llm_core import export
from llm_core.model import Transformer
from tests.helpers import tiny_model_config

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("kw", [dict(), dict(n_kv_heads=1, tie_embeddings=False), dict(n_kv_heads=4)])
def test_logits_match_transformers_llama(tmp_path, kw):
    model = Transformer(tiny_model_config(**kw)).eval()
    export.export_hf(model, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    x = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)
    back = export.import_hf(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x))
