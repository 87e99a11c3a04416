"""Data engine: the built-in world, sources -> parquet, the tokenizer and chat template, token shards, the loader."""
