"""Our Transformer against Hugging Face's LlamaForCausalLM with the same weights (exported through llm_core.export),
and the exported tokenizer against ours."""

import json

import pytest
import torch

from llm_core import export
from llm_core.data import chat
from llm_core.inference.generate import SamplingParams, generate
from llm_core.model.io import load_model, write_model
from llm_core.model.transformer import Transformer
from tests.helpers import tiny_model_config

transformers = pytest.importorskip("transformers")


def _load_hf(folder):
    return transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("kw", [dict(), dict(n_kv_heads=1, tie_embeddings=False), dict(n_kv_heads=4),
                                dict(rope_theta=500000.0, norm_eps=1e-6)])
def test_logits_match_transformers_llama(tmp_path, kw):
    model = Transformer(tiny_model_config(**kw)).eval()
    export.export_hf(model, tmp_path / "hf")
    hf = _load_hf(tmp_path / "hf")
    x = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)
    back = export.import_hf(tmp_path / "hf")
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x))


def test_qk_norm_cannot_be_exported(tmp_path):
    model = Transformer(tiny_model_config(qk_norm=True))
    with pytest.raises(ValueError, match="qk_norm has no LlamaForCausalLM equivalent"):
        export.export_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer_dir, tokenizer):
    """A trained-model folder as a stage writes it, exported with the one documented command."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = Transformer(tiny_model_config(vocab_size=tokenizer.vocab_size)).eval()
    write_model(root / "sft", model)
    export.main([str(root / "sft"), str(root / "sft-hf"), "--tokenizer", str(tokenizer_dir), "--verify"])
    return model, root


def test_export_command_writes_a_loadable_llama_folder(exported, tokenizer):
    model, root = exported
    folder = root / "sft-hf"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["bos_token_id"] == tokenizer.bos_id and gen["eos_token_id"][0] == tokenizer.end_id
    assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == model.cfg.max_seq_len
    hf = _load_hf(folder)
    assert hf.config.bos_token_id == tokenizer.bos_id and hf.config.eos_token_id == tokenizer.end_id
    x = torch.randint(0, tokenizer.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)

    # greedy decoding through transformers' generate (its own KV cache, our generation_config) matches ours
    prompt = [tokenizer.bos_id] + tokenizer.encode("Once upon a time")
    ours, _ = generate(model, prompt, SamplingParams(max_new_tokens=8, temperature=0),
                       stop_ids=gen["eos_token_id"])
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=8)[0, len(prompt):].tolist()
    assert theirs[:len(ours)] == ours
    assert len(theirs) == len(ours) or theirs[len(ours)] in gen["eos_token_id"]


def test_exported_tokenizer_matches_ours(exported, tokenizer):
    _, root = exported
    hf_tok = transformers.AutoTokenizer.from_pretrained(root / "sft-hf")
    text = "Lily saw a red ball. She said, \"Can I play?\"\n\nTom nodded 42 times."
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    assert hf_tok(text)["input_ids"] == [tokenizer.bos_id] + tokenizer.encode(text)  # as pretraining documents
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is Milo?"},
                {"role": "assistant", "content": "A cat."}, {"role": "user", "content": "What colour?"}]
    for generation_prompt in (False, True):
        ids = hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
        if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        assert ids == chat.render(messages, tokenizer, add_generation_prompt=generation_prompt)[0]
    assert hf_tok.decode(tokenizer.encode(text)) == text


def test_import_command_round_trips(exported, tmp_path):
    model, root = exported
    export.main(["--from-hf", str(root / "sft-hf"), str(tmp_path / "back")])
    back = load_model(tmp_path / "back")
    x = torch.randint(0, model.cfg.vocab_size, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x))
    assert (tmp_path / "back" / "tokenizer.json").exists()


def test_bf16_export_loads(exported, tmp_path):
    model, root = exported
    export.main([str(root / "sft"), str(tmp_path / "bf16")])
    export.main([str(root / "sft"), str(tmp_path / "bf16"), "--dtype", "bf16"])  # replaces the earlier export
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    back = export.import_hf(tmp_path / "bf16")
    x = torch.randint(0, model.cfg.vocab_size, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), atol=0.05, rtol=0.05)


def test_import_refuses_what_it_cannot_represent(exported, tmp_path):
    _, root = exported
    folder = tmp_path / "scaled"
    export.main([str(root / "sft"), str(folder)])
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="RoPE scaling 'yarn' is not supported"):
        export.import_hf(folder)
