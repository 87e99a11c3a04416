"""The architecture: the Transformer (blocks, RoPE, norms), attention backends, and the model folder format."""
