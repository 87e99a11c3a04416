"""Inference: KV-cache generation and sampling."""
