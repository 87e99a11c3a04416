"""Hugging Face interop: our model folder <-> a Hugging Face folder of the model's family, from Python or one command.

    python -m llm_core.export models/sft exports/sft-hf --tokenizer models/tokenizer    # ours -> Hugging Face folder
    python -m llm_core.export --from-hf exports/sft-hf models/imported                  # Hugging Face folder -> ours

The exported folder holds config.json, model.safetensors, generation_config.json and, with --tokenizer,
tokenizer.json + tokenizer_config.json (special tokens and the chat template), so `AutoModelForCausalLM`,
`AutoTokenizer.from_pretrained` and `apply_chat_template` work on it, as do tools that read this layout (vLLM,
llama.cpp's converter). The family is the one the model was imported from (`families.py`: Llama, Qwen2, Mistral),
Llama for a model trained from scratch, DeepSeek-V3 for latent attention or experts (`deepseek.py`). QK-norm has no
equivalent in these families, so such models are refused.

`init.py` is the pipeline's side: the `import_model` stage turns a downloaded folder (`model.init: hf`) into
`models/init`, which pretraining continues from.
"""

__all__ = ["DTYPES", "TOKENIZER_FILES", "export_hf", "from_hf_state_dict", "hf_config", "import_hf", "main",
           "ours_from_hf", "to_hf_state_dict"]


def __getattr__(name: str):
    """The names above, imported when first used: the `import_model` stage imports this package, and with nothing to
    import it should not pay for torch (most of a stage's start-up)."""
    if name == "main":
        from llm_core.export.cli import main
        return main
    if name in __all__:
        from llm_core.export import convert
        return getattr(convert, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
