"""Open models of every supported family against transformers, without downloads: a tiny random model of each
family's shape (SmolLM2, Llama 3.2 with llama3 RoPE scaling, TinyLlama, a Llama with attention and MLP biases,
Qwen2, Mistral) is made and saved by transformers with a tiny tokenizer, imported by the import stage's code, and
compared: logits (fp32), greedy decoding, the tokenizer's ids and chat template; exported back, it is the same
family and transformers loads it. Checkpoints the Transformer cannot compute are refused, naming what is missing."""

from __future__ import annotations

import json

import pytest
import torch

from llm_core import export
from llm_core.config import ModelConfig, ParamsError, TokenizerConfig
from llm_core.data import chat
from llm_core.data.tokenizer import Tokenizer
from llm_core.export.init import import_init
from llm_core.inference.generate import SamplingParams, generate
from llm_core.model.io import load_model
from tests.hf_folders import SHAPES, build

transformers = pytest.importorskip("transformers")

TEXT = "Lily saw a red ball. She said, \"Can I play?\"\n\nTom nodded 42 times; Zoë smiled \u2014 \u4f60\u597d!"
CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is Milo?"},
        {"role": "assistant", "content": "A cat."}, {"role": "user", "content": "What colour?"}]


def _ids(out) -> list[int]:
    return out if isinstance(out, list) else out["input_ids"]  # transformers 5 returns a BatchEncoding


@pytest.fixture(scope="module")
def texts(stories):
    return stories[:200]


@pytest.fixture(scope="module", params=sorted(SHAPES))
def imported(request, tmp_path_factory, texts):
    """(shape name, the transformers folder, models/init as the import stage writes it)."""
    root = tmp_path_factory.mktemp(request.param)
    folder = build(root / "hf", request.param, texts)
    import_init(ModelConfig(init="hf", init_path=str(folder)), TokenizerConfig(source="hf"), root / "init")
    return request.param, folder, root / "init"


def _hf_model(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_logits_match_transformers(imported):
    name, folder, init = imported
    ours, hf = load_model(init).eval(), _hf_model(folder)
    assert ours.cfg.family == SHAPES[name]["family"]
    vocab = hf.config.vocab_size  # ours may have more rows: role tokens added for our chat template
    x = torch.randint(0, vocab, (2, 48))
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[..., :vocab], hf(x).logits, atol=1e-5, rtol=0)


def test_greedy_decoding_matches_transformers(imported):
    name, folder, init = imported
    ours, hf = load_model(init).eval(), _hf_model(folder)
    tok = Tokenizer.from_dir(init / "tokenizer")
    prompt = [tok.bos_id] + tok.encode("Once upon a time, Lily")
    mine, _ = generate(ours, prompt, SamplingParams(max_new_tokens=16, temperature=0))
    with torch.no_grad():
        x = torch.tensor([prompt])
        theirs = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=16,
                             min_new_tokens=16, eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert mine == theirs


def test_tokenizer_and_chat_template_match_transformers(imported):
    name, folder, init = imported
    tok = Tokenizer.from_dir(init / "tokenizer")
    # the folder's own tokenizer for plain text; the imported one (with our template, where the folder had none)
    assert transformers.AutoTokenizer.from_pretrained(folder)(TEXT, add_special_tokens=False)["input_ids"] \
        == tok.encode(TEXT)
    hf_tok = transformers.AutoTokenizer.from_pretrained(init / "tokenizer")
    assert tok.decode(tok.encode(TEXT)) == hf_tok.decode(hf_tok(TEXT, add_special_tokens=False)["input_ids"])
    for generation_prompt in (False, True):
        theirs = _ids(hf_tok.apply_chat_template(CONV, tokenize=True, add_generation_prompt=generation_prompt))
        ids, mask = chat.render(CONV, tok, add_generation_prompt=generation_prompt)
        # a chat opens with the document separator, as pretraining documents do (ChatML templates have none)
        assert ids == ([tok.bos_id] if theirs[0] != tok.bos_id else []) + theirs
    # the loss mask covers the assistant's turn exactly: its text and the template's end-of-turn marker
    ids, mask = chat.render(CONV[:3], tok)
    learned = tok.decode([i for i, m in zip(ids, mask) if m])
    turn = chat.template_text(CONV[:3], tok)[len(chat.template_text(CONV[:2], tok, add_generation_prompt=True)):]
    assert learned == turn and turn.startswith("A cat.") and any(s in turn for s in tok.special_ids)
    if SHAPES[name]["template"] is None:  # ours, with our role markers added to the folder's tokenizer
        assert json.loads((init / "init.json").read_text())["added_tokens"] == ["<|user|>", "<|assistant|>",
                                                                                "<|system|>", "<|end|>"]
        assert learned == "A cat.<|end|>"


def test_export_writes_the_same_family_back(imported, tmp_path):
    name, folder, init = imported
    ours = load_model(init).eval()
    out = export.export_hf(ours, tmp_path / "hf", tokenizer_dir=init / "tokenizer")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == SHAPES[name]["family"] == json.loads((folder / "config.json").read_text())[
        "model_type"]
    hf = _hf_model(out)
    assert type(hf).__name__ == export.families.ARCHITECTURES[config["model_type"]]
    x = torch.randint(0, ours.cfg.vocab_size, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x), atol=1e-5, rtol=0)
    tok = Tokenizer.from_dir(init / "tokenizer")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    theirs = _ids(hf_tok.apply_chat_template(CONV, tokenize=True, add_generation_prompt=True))
    assert chat.render(CONV, tok, add_generation_prompt=True)[0][-len(theirs):] == theirs


# --------------------------------------------------------------------------------------------------------------------
# what cannot be imported is refused, naming what is missing


def _config_only(tmp_path, config) -> object:
    folder = tmp_path / "hf"
    config.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("make,match", [
    (lambda: transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2),
     r"model_type 'gpt2' is not supported: llm_core imports the families llama, mistral, qwen2 \(gpt2 has learned "
     r"absolute position embeddings"),
    (lambda: transformers.GemmaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, head_dim=16,
                                      intermediate_size=64),
     r"model_type 'gemma' is not supported.*RMSNorm scaled by \(1 \+ weight\)"),
    (lambda: transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                      intermediate_size=64, rope_scaling={"rope_type": "yarn", "factor": 4.0}),
     r"RoPE scaling 'yarn' is not supported"),
    (lambda: transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, head_dim=32,
                                      intermediate_size=64),
     r"head_dim 32 != hidden_size / num_attention_heads"),
    (lambda: transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                      intermediate_size=64, hidden_act="gelu"),
     r"hidden_act 'gelu' is not supported"),
    (lambda: transformers.MistralConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                        intermediate_size=64, max_position_embeddings=256, sliding_window=64),
     r"sliding_window=64 is shorter than the context \(256 positions\).*set model.max_seq_len to at most 64"),
    (lambda: transformers.Qwen2Config(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=256, use_sliding_window=True,
                                      sliding_window=64, max_window_layers=1),
     r"sliding_window=64 is shorter than the context"),
])
def test_unsupported_checkpoints_are_refused(tmp_path, make, match):
    folder = _config_only(tmp_path, make())
    with pytest.raises(ValueError, match=match):
        import_init(ModelConfig(init="hf", init_path=str(folder)), TokenizerConfig(source="hf"), tmp_path / "init")
    assert not (tmp_path / "init").exists()  # nothing half-written


def test_a_mistral_window_that_covers_the_context_is_accepted(tmp_path, texts):
    folder = build(tmp_path / "hf", "mistral", texts, sliding_window=16)
    model = ModelConfig(init="hf", init_path=str(folder), max_seq_len=16)
    import_init(model, TokenizerConfig(source="hf"), tmp_path / "init")
    ours, hf = load_model(tmp_path / "init").eval(), _hf_model(folder)
    assert ours.cfg.max_seq_len == 16
    x = torch.randint(0, hf.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[..., :hf.config.vocab_size], hf(x).logits, atol=1e-5, rtol=0)


def test_params_that_contradict_the_folder_name_the_key(tmp_path, texts):
    folder = build(tmp_path / "hf", "qwen2", texts)
    with pytest.raises(ParamsError, match=r"model.n_layers is 4 but .*config.json has 2 \(num_hidden_layers\).*"
                                          r"leave model.n_layers blank"):
        import_init(ModelConfig(init="hf", init_path=str(folder), n_layers=4), TokenizerConfig(source="hf"),
                    tmp_path / "init")
    with pytest.raises(ParamsError, match=r"model.norm_eps is 1e-05 but .* has 1e-06 \(rms_norm_eps\)"):
        import_init(ModelConfig(init="hf", init_path=str(folder), norm_eps=1e-5), TokenizerConfig(source="hf"),
                    tmp_path / "init")
    with pytest.raises(ParamsError, match=r"model.init: hf needs tokenizer.source: hf"):
        import_init(ModelConfig(init="hf", init_path=str(folder)), TokenizerConfig(), tmp_path / "init")
    # keys that agree with the folder are fine
    import_init(ModelConfig(init="hf", init_path=str(folder), n_layers=2, d_model=48), TokenizerConfig(source="hf"),
                tmp_path / "init")
