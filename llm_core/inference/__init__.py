"""Inference: the batched KV-cache engine and its sampling, text streaming, prompts files, and the three ways to talk
to a model (the `sample` stage's batch, the `llm-chat` console and the `llm-serve` OpenAI-compatible server)."""
