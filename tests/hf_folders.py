"""Tiny Hugging Face model folders built offline: a random model of a family's shape made by `transformers` itself
(its own config class), saved with a tiny `tokenizers` BPE (tokenizer.json + tokenizer_config.json, with or without a
chat template), as `huggingface-cli download` would leave a real checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

# family, tokenizer style and shape of the real models, scaled down (head counts and ratios kept where they fit)
SHAPES = {
    # SmolLM2-135M: tied, 3:1 GQA, rope_theta 1e5, ChatML, <|endoftext|> both bos and eos
    "smollm2": dict(family="llama", tokenizer="bytelevel", template=CHATML,
                    specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos="<|endoftext|>",
                    eos="<|im_end|>", config=dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
                                                  intermediate_size=128, tie_word_embeddings=True,
                                                  rope_theta=100000.0, rms_norm_eps=1e-5)),
    # Llama 3.2 1B: tied, 4:1 GQA, llama3 RoPE scaling, the Llama 3 template
    "llama3.2": dict(family="llama", tokenizer="bytelevel", template=LLAMA3,
                     specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                               "<|eot_id|>"], bos="<|begin_of_text|>", eos="<|eot_id|>",
                     config=dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, intermediate_size=160,
                                 tie_word_embeddings=True, rope_theta=500000.0, rms_norm_eps=1e-5,
                                 rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    # TinyLlama 1.1B: untied, 8:1 GQA (here 4:1), SentencePiece-style BPE with byte fallback, no chat template
    "tinyllama": dict(family="llama", tokenizer="metaspace", template=None, specials=["<unk>", "<s>", "</s>"],
                      bos="<s>", eos="</s>", config=dict(hidden_size=64, num_attention_heads=8,
                                                         num_key_value_heads=2, intermediate_size=176,
                                                         tie_word_embeddings=False, rms_norm_eps=1e-5)),
    # a Llama with attention_bias and mlp_bias
    "llama-bias": dict(family="llama", tokenizer="bytelevel", template=CHATML,
                       specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos="<|endoftext|>",
                       eos="<|endoftext|>", config=dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                                                        intermediate_size=96, tie_word_embeddings=False,
                                                        attention_bias=True, mlp_bias=True)),
    # Qwen2.5-0.5B: q/k/v biases, tied, 7:1 GQA (here 3:1), rope_theta 1e6, ChatML, no bos token
    # (its embedding matrix padded past the tokenizer, as Qwen's is)
    "qwen2": dict(family="qwen2", tokenizer="bytelevel", template=CHATML, pad_vocab=24,
                  specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|im_end|>",
                  config=dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=2, intermediate_size=128,
                              tie_word_embeddings=True, rope_theta=1000000.0)),
    # Mistral 7B v0.3: untied, 4:1 GQA, no sliding window, SentencePiece-style BPE without a chat template
    "mistral": dict(family="mistral", tokenizer="metaspace", template=None, specials=["<unk>", "<s>", "</s>"],
                    bos="<s>", eos="</s>", config=dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
                                                       intermediate_size=160, tie_word_embeddings=False,
                                                       sliding_window=None, rope_theta=1000000.0)),
}


def _bytelevel(texts: list[str], vocab_size: int, specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _metaspace(texts: list[str], vocab_size: int, specials: list[str]) -> Tokenizer:
    """Llama 2 / TinyLlama / Mistral style: U+2581 for spaces, the 256 <0xNN> byte tokens after the specials, byte
    fallback for anything the merges do not cover."""
    raw = Tokenizer(models.BPE())
    raw.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    raw.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    raw.train_from_iterator(texts, trainer=trainers.BpeTrainer(vocab_size=vocab_size - 256, show_progress=False))
    learned = json.loads(raw.to_str())["model"]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)]
    vocab = {p: i for i, p in enumerate(pieces)}
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = raw.normalizer
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def save_tokenizer(folder: Path, texts: list[str], style: str, specials: list[str], bos: str | None, eos: str,
                   template: str | None, vocab_size: int = 360) -> Tokenizer:
    tok = (_bytelevel if style == "bytelevel" else _metaspace)(texts, vocab_size, specials)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
              "clean_up_tokenization_spaces": False, "model_max_length": 128}
    if template is not None:
        config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tok


def save_model(folder: Path, family: str, vocab_size: int, seed: int = 0, n_layers: int = 2,
               max_position_embeddings: int = 128, **config):
    """A random model of `family` made and saved by transformers (fp32), its biases non-zero (transformers
    initialises them to zero, which would hide a missing bias)."""
    import torch
    import transformers

    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "mistral": transformers.MistralConfig}[family]
    cfg = cls(vocab_size=vocab_size, num_hidden_layers=n_layers, max_position_embeddings=max_position_embeddings,
              **config)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.02)
    model.save_pretrained(folder)
    return model


def build(folder: Path, name: str, texts: list[str], **config) -> Path:
    """The folder of SHAPES[name] (config overrides on top of the shape's)."""
    shape = SHAPES[name]
    tok = save_tokenizer(folder, texts, shape["tokenizer"], shape["specials"], shape["bos"], shape["eos"],
                         shape["template"])
    ids = {s: tok.token_to_id(s) for s in shape["specials"]}
    extra = dict(bos_token_id=ids.get(shape["bos"]), eos_token_id=ids[shape["eos"]])
    save_model(folder, shape["family"], tok.get_vocab_size() + shape.get("pad_vocab", 0),
               **{**shape["config"], **extra, **config})
    return folder
