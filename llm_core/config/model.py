"""The model section of params.yaml: presets, the per-layer view of a heterogeneous model, and the accounting
(parameters total / active per token, training FLOPs per token, KV-cache bytes per token) derived from the shape.

A model is a stack of blocks, each an attention (`gqa` or `mla`) and a feed-forward (`dense` SwiGLU or `moe`).
Top-level keys set every block; `first_dense_layers` keeps the first blocks of a MoE model dense (DeepSeek's
choice: routing is least useful on the early, token-local layers); `layers` overrides keys block by block.
`ModelConfig.layer(i)` is the resolved view of block i, the only thing the model code reads per block.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from llm_core.config.base import ParamsError, _at_least, _choice, _round_up, _Section

ATTENTION_TYPES = ("gqa", "mla")
FFN_TYPES = ("dense", "moe")
SCORE_FUNCS = ("sigmoid", "softmax")
MOE_PATHS = ("auto", "loop", "grouped")
ATTENTION_BACKENDS = ("sdpa", "triton", "naive")
INITS = ("", "hf")
# ModelConfig fields that params.yaml does not set: the tokenizer gives vocab_size, a Hugging Face folder the rest
NOT_PARAMS = ("vocab_size", "family", "qkv_bias", "out_bias", "mlp_bias", "rope_scaling")
# params.yaml keys that say where the weights come from, not what the architecture is: left out of config.json
NOT_ARCHITECTURE = ("init", "init_path")
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
TRITON_HEAD_DIMS = (32, 64, 128)
EXPERT_MULTIPLE = 64  # default expert_hidden rounds up to this
CACHE_BYTES = 2  # KV-cache figures are for a bf16 cache, the dtype decoding runs in on GPUs


@dataclass
class LayerConfig(_Section):
    """One entry of `model.layers`: the keys a single block may change (null = the model-wide value)."""

    attention_type: str | None = None
    n_kv_heads: int | None = None
    kv_lora_rank: int | None = None
    q_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    qk_nope_head_dim: int | None = None
    v_head_dim: int | None = None
    ffn: str | None = None
    ffn_hidden: int | None = None
    n_experts: int | None = None
    top_k: int | None = None
    n_shared_experts: int | None = None
    expert_hidden: int | None = None
    score_func: str | None = None

    def overrides(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclass
class ModelConfig(_Section):
    """The Transformer's shape. `vocab_size` comes from the tokenizer, not from params.yaml."""

    preset: str = "tiny"
    n_layers: int | None = None
    d_model: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None  # < n_heads: grouped-query attention; 1: multi-query
    ffn_hidden: int | None = None  # SwiGLU hidden width; null = 8/3 * d_model rounded up to a multiple of 64
    max_seq_len: int | None = None  # longest context; RoPE tables are built for it
    rope_theta: float | None = None
    norm_eps: float | None = None
    tie_embeddings: bool | None = None  # share the input embedding with the output head
    qk_norm: bool | None = None  # RMSNorm on queries and keys per head
    init_std: float | None = None  # std of the normal weight init (residual output projections get a scaled one)
    attention: str = "sdpa"  # sdpa | triton | naive
    attention_type: str = "gqa"  # gqa (grouped-query) | mla (multi-head latent attention)
    kv_lora_rank: int | None = None  # mla: width of the cached key/value latent (null = 2 * head dim)
    q_lora_rank: int | None = None  # mla: query latent width (null / 0 = a plain query projection)
    qk_rope_head_dim: int | None = None  # mla: rotary part of each query/key head (null = head dim / 2)
    qk_nope_head_dim: int | None = None  # mla: position-free part of each query/key head (null = head dim)
    v_head_dim: int | None = None  # mla: value head width (null = head dim)
    ffn: str = "dense"  # dense (SwiGLU) | moe (mixture of experts)
    n_experts: int = 8  # moe: routed experts per layer
    top_k: int = 2  # moe: routed experts per token
    n_shared_experts: int = 1  # moe: experts every token goes through
    expert_hidden: int | None = None  # moe: one expert's SwiGLU width (null = ffn_hidden / (top_k + shared), up to x64)
    score_func: str = "sigmoid"  # moe: router scores, sigmoid (DeepSeek-V3) | softmax
    first_dense_layers: int = 0  # moe: the first blocks keep a dense feed-forward
    bias_update_rate: float = 1e-3  # moe: step of the load-balancing bias per optimizer step (0 = off)
    aux_loss_weight: float = 0.0  # moe: weight of the sequence-level balance loss (0 = off)
    moe_path: str = "auto"  # moe: loop (reference) | grouped (torch._grouped_mm) | auto (grouped where it runs)
    layers: list[LayerConfig] = field(default_factory=list)  # per-block overrides (empty = all blocks alike)
    dropout: float = 0.0  # dropout on the attention and feed-forward outputs (training only)
    init: str = ""  # "" = random init | hf = start from the Hugging Face folder `init_path` (architecture from it)
    init_path: str = "hf"  # a local Hugging Face model folder (a DVC dependency of the import stage)
    # Set by the tokenizer and by a Hugging Face folder's config.json (model.init), never by params.yaml:
    vocab_size: int = 0
    family: str = ""  # the Hugging Face family it came from (llama | qwen2 | mistral): what export writes back
    qkv_bias: bool = False  # biases on the query/key/value projections (Qwen2; Llama's attention_bias)
    out_bias: bool = False  # bias on the attention output projection (Llama's attention_bias)
    mlp_bias: bool = False  # biases on the SwiGLU projections (Llama's mlp_bias)
    rope_scaling: dict | None = None  # Llama 3's RoPE frequency scaling: {rope_type: llama3, factor, ...}

    def __post_init__(self) -> None:
        # config.json stores the overrides as plain mappings
        self.layers = [LayerConfig(**entry) if isinstance(entry, dict) else entry for entry in (self.layers or [])]

    def resolved(self, vocab_size: int) -> "ModelConfig":
        """The preset with explicit keys applied on top, plus derived fields."""
        if self.preset not in PRESETS:
            raise ParamsError(f"params.yaml: model.preset must be one of {sorted(PRESETS)} (got {self.preset!r})")
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, preset_value in PRESETS[self.preset].items():
            if values[key] is None:
                values[key] = preset_value
        if values["n_kv_heads"] is None:
            values["n_kv_heads"] = values["n_heads"]
        if values["ffn_hidden"] is None:
            values["ffn_hidden"] = _round_up(int(8 * values["d_model"] / 3), 64)
        head_dim = values["d_model"] // values["n_heads"]
        derived = dict(kv_lora_rank=2 * head_dim, q_lora_rank=0, qk_rope_head_dim=max(2, head_dim // 2 // 2 * 2),
                       qk_nope_head_dim=head_dim, v_head_dim=head_dim)
        for key, value in derived.items():
            if values[key] is None:
                values[key] = value
        if values["expert_hidden"] is None:
            # the routed + shared experts a token goes through add up to the dense layer's width (same active size),
            # rounded up to a multiple of 64: the grouped expert matmul on GPUs needs 16-byte row strides, and
            # tensor cores want multiples of 64 (ffn_hidden // 3 alone gives 682 for 124m, 1365 for 774m)
            values["expert_hidden"] = _round_up(
                max(1, values["ffn_hidden"] // (values["top_k"] + values["n_shared_experts"])), EXPERT_MULTIPLE)
        values["vocab_size"] = vocab_size
        values["layers"] = [dataclasses.replace(entry) for entry in self.layers]
        cfg = ModelConfig(**values)
        cfg.validate()
        return cfg

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def qk_head_dim(self) -> int:
        """Query/key width per head: head_dim for gqa, nope + rope for mla."""
        if self.attention_type == "mla":
            return self.qk_nope_head_dim + self.qk_rope_head_dim
        return self.head_dim

    @property
    def rope_dim(self) -> int:
        return self.qk_rope_head_dim if self.attention_type == "mla" else self.head_dim

    def layer(self, i: int) -> "ModelConfig":
        """The resolved config of block i: model-wide keys, `first_dense_layers`, then `layers[i]`'s overrides."""
        values: dict[str, Any] = {"layers": []}
        if self.ffn == "moe" and i < self.first_dense_layers:
            values["ffn"] = "dense"
        if self.layers:
            values.update(self.layers[i].overrides())
        return dataclasses.replace(self, **values)

    def validate(self) -> None:
        _choice("model.attention", self.attention, ATTENTION_BACKENDS)
        _choice("model.attention_type", self.attention_type, ATTENTION_TYPES)
        _choice("model.ffn", self.ffn, FFN_TYPES)
        _choice("model.score_func", self.score_func, SCORE_FUNCS)
        _choice("model.moe_path", self.moe_path, MOE_PATHS)
        _choice("model.init", self.init, INITS)
        if self.init == "hf" and not self.init_path:
            raise ParamsError("params.yaml: model.init=hf needs model.init_path (a local Hugging Face model folder)")
        if self.rope_scaling is not None and (self.rope_scaling.get("rope_type") != "llama3"
                                              or any(k not in self.rope_scaling for k in LLAMA3_ROPE_KEYS)):
            raise ParamsError(f"model config: rope_scaling must be Llama 3's (rope_type llama3 with "
                              f"{', '.join(LLAMA3_ROPE_KEYS)}); got {self.rope_scaling}")
        if not 0 <= self.dropout < 1:
            raise ParamsError(f"params.yaml: model.dropout must be in [0, 1) (got {self.dropout})")
        for key in ("bias_update_rate", "aux_loss_weight", "first_dense_layers"):
            _at_least(f"model.{key}", getattr(self, key), 0)
        if self.preset not in PRESETS:
            raise ParamsError(f"params.yaml: model.preset must be one of {sorted(PRESETS)} (got {self.preset!r})")
        if not self.vocab_size:  # not resolved yet: explicit keys only
            for key in ("n_layers", "d_model", "n_heads", "n_kv_heads", "ffn_hidden", "max_seq_len"):
                value = getattr(self, key)
                if value is not None:
                    _at_least(f"model.{key}", value, 1)
            if self.init_std is not None and not self.init_std > 0:
                raise ParamsError(f"params.yaml: model.init_std must be > 0 (got {self.init_std})")
            return
        for key in ("n_layers", "d_model", "n_heads", "n_kv_heads", "max_seq_len"):
            _at_least(f"model.{key}", getattr(self, key), 1)
        # head grouping first: with a preset's width, a new n_heads / n_kv_heads pair is the likelier mistake
        if self.n_heads % self.n_kv_heads:
            raise ParamsError(f"params.yaml: model.n_heads ({self.n_heads}) must be divisible by model.n_kv_heads "
                              f"({self.n_kv_heads})")
        if self.d_model % self.n_heads:
            raise ParamsError(f"params.yaml: model.d_model ({self.d_model}) must be divisible by model.n_heads "
                              f"({self.n_heads})")
        if not self.init_std > 0:
            raise ParamsError(f"params.yaml: model.init_std must be > 0 (got {self.init_std})")
        if self.first_dense_layers > self.n_layers:
            raise ParamsError(f"params.yaml: model.first_dense_layers ({self.first_dense_layers}) must be <= "
                              f"model.n_layers ({self.n_layers})")
        if self.layers and len(self.layers) != self.n_layers:
            raise ParamsError(f"params.yaml: model.layers has {len(self.layers)} entries but model.n_layers is "
                              f"{self.n_layers}: give one entry per block ({{}} keeps a block as the model-wide keys)")
        for i in range(self.n_layers):
            self._validate_layer(i)

    def _validate_layer(self, i: int) -> None:
        view = self.layer(i)
        overridden = set(self.layers[i].overrides()) if self.layers else set()

        def key(name: str) -> str:
            return f"model.layers[{i}].{name}" if name in overridden else f"model.{name} (layer {i})"

        _choice(key("attention_type"), view.attention_type, ATTENTION_TYPES)
        _choice(key("ffn"), view.ffn, FFN_TYPES)
        _choice(key("score_func"), view.score_func, SCORE_FUNCS)
        if view.attention_type == "gqa":
            _at_least(key("n_kv_heads"), view.n_kv_heads, 1)
            if view.n_heads % view.n_kv_heads:
                raise ParamsError(f"params.yaml: model.n_heads ({view.n_heads}) must be divisible by "
                                  f"{key('n_kv_heads')} ({view.n_kv_heads})")
            if view.head_dim % 2:
                raise ParamsError(f"params.yaml: model head dim d_model/n_heads = {view.head_dim} must be even "
                                  "for RoPE")
        else:
            for name, low in (("kv_lora_rank", 1), ("q_lora_rank", 0), ("qk_rope_head_dim", 2),
                              ("qk_nope_head_dim", 0), ("v_head_dim", 1)):
                _at_least(key(name), getattr(view, name), low)
            if view.qk_rope_head_dim % 2:
                raise ParamsError(f"params.yaml: {key('qk_rope_head_dim')} must be even for RoPE "
                                  f"(got {view.qk_rope_head_dim})")
            if view.qk_norm:
                raise ParamsError(f"params.yaml: model.qk_norm applies to gqa attention only; {key('attention_type')}"
                                  " is mla (its latents are normalised already): set model.qk_norm: false")
            if view.attention == "triton" and not (view.qk_head_dim == view.v_head_dim
                                                   and view.qk_head_dim in TRITON_HEAD_DIMS):
                raise ParamsError(
                    f"params.yaml: model.attention=triton needs {key('qk_nope_head_dim')} + "
                    f"{key('qk_rope_head_dim')} == {key('v_head_dim')}, one of {TRITON_HEAD_DIMS} (got "
                    f"{view.qk_nope_head_dim} + {view.qk_rope_head_dim} and {view.v_head_dim}); change them or use "
                    "model.attention=sdpa")
        if view.attention_type == "mla" and (view.qkv_bias or view.out_bias):
            raise ParamsError(f"model config: attention biases (qkv_bias / out_bias) apply to gqa attention only; "
                              f"{key('attention_type')} is mla")
        if view.ffn == "moe" and view.mlp_bias:
            raise ParamsError(f"model config: mlp_bias applies to dense feed-forwards only; {key('ffn')} is moe")
        if view.ffn == "dense":
            _at_least(key("ffn_hidden"), view.ffn_hidden, 1)
        else:
            _at_least(key("n_experts"), view.n_experts, 2)
            _at_least(key("top_k"), view.top_k, 1)
            _at_least(key("n_shared_experts"), view.n_shared_experts, 0)
            _at_least(key("expert_hidden"), view.expert_hidden, 1)
            if view.top_k > view.n_experts:
                raise ParamsError(f"params.yaml: {key('top_k')} ({view.top_k}) must be <= {key('n_experts')} "
                                  f"({view.n_experts})")

    def to_dict(self) -> dict:
        """The architecture, as a model folder's config.json stores it."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in NOT_ARCHITECTURE}

    # ---------------------------------------------------------------------------------------------------------------
    # accounting

    def _block_counts(self, i: int) -> dict[str, int]:
        """Block i's parameters (all / used per token), its matmul weights used per token, and its attention width
        (query-key + value width summed over heads, for the score and mixing matmuls)."""
        c = self.layer(i)
        d, h = c.d_model, c.n_heads
        if c.attention_type == "gqa":
            hd = c.head_dim
            attn = d * h * hd * 2 + d * c.n_kv_heads * hd * 2
            attn_norms = 2 * hd if c.qk_norm else 0
            attn_norms += (h + 2 * c.n_kv_heads) * hd * c.qkv_bias + d * c.out_bias  # biases: no matmul
            width = h * 2 * hd
        else:
            q = (d * h * c.qk_head_dim if not c.q_lora_rank
                 else d * c.q_lora_rank + c.q_lora_rank * h * c.qk_head_dim)
            attn = (q + d * (c.kv_lora_rank + c.qk_rope_head_dim)
                    + c.kv_lora_rank * h * (c.qk_nope_head_dim + c.v_head_dim) + h * c.v_head_dim * d)
            attn_norms = c.kv_lora_rank + (c.q_lora_rank or 0)
            width = h * (c.qk_head_dim + c.v_head_dim)
        if c.ffn == "dense":
            ffn_all = ffn_used = 3 * d * c.ffn_hidden
            attn_norms += (2 * c.ffn_hidden + d) * c.mlp_bias
        else:
            expert = 3 * d * c.expert_hidden
            shared = expert * c.n_shared_experts
            router = d * c.n_experts
            ffn_all = router + c.n_experts * expert + shared
            ffn_used = router + c.top_k * expert + shared
        norms = 2 * d + attn_norms
        return {"all": attn + ffn_all + norms, "used": attn + ffn_used + norms, "matmul": attn + ffn_used,
                "width": width}

    def num_params(self, embeddings: bool = True, active: bool = False) -> int:
        """Parameter count from the shape alone (tied head counted once); `active`: those one token uses (a MoE
        layer's routed experts count top_k times, not n_experts times)."""
        d = self.d_model
        body = sum(self._block_counts(i)["used" if active else "all"] for i in range(self.n_layers)) + d
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return body + (emb if embeddings else (0 if self.tie_embeddings else self.vocab_size * d))

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token, 6N + 6T * sum over layers of heads * (qk + v head width) (PaLM appendix B, as
        nanoGPT and torchtitan count for MFU; with equal q/k/v widths the second term is the familiar 12LDT).

        N counts the matmul weights a token goes through (a MoE layer's router, shared experts and top_k routed
        experts; MLA's real projections), the output head included even when tied (the lookup of the input
        embedding and the norms do no matmul); the attention term is QK^T and PV over the full T x T score matrix,
        forward and backward. Causal kernels skip half of that matrix, but MFU conventionally counts it all, so MFU
        figures compare with the literature. Equals a FLOP counter run on the model (tests/unit/test_model.py).
        """
        counts = [self._block_counts(i) for i in range(self.n_layers)]
        n = sum(c["matmul"] for c in counts) + self.vocab_size * self.d_model
        return 6.0 * n + 6.0 * seq_len * sum(c["width"] for c in counts)

    def kv_cache_bytes_per_token(self, as_gqa: bool = False) -> int:
        """Bytes one token adds to the decoding cache (bf16), over all layers. MLA keeps the key/value latent and the
        shared rotary key; `as_gqa`: what the same heads would keep as grouped-query attention (full keys and
        values of n_kv_heads heads)."""
        total = 0
        for i in range(self.n_layers):
            c = self.layer(i)
            if c.attention_type == "mla" and not as_gqa:
                total += c.kv_lora_rank + c.qk_rope_head_dim
            else:
                total += 2 * c.n_kv_heads * c.head_dim
        return total * CACHE_BYTES

    def summary(self) -> str:
        """One line on the size and the decoding cache, for logs."""
        total, active = self.num_params(), self.num_params(active=True)
        kinds = sorted({f"{self.layer(i).attention_type}/{self.layer(i).ffn}" for i in range(self.n_layers)})
        line = f"{total:,} parameters ({active:,} active per token), blocks {'+'.join(kinds)}"
        kv, kv_gqa = self.kv_cache_bytes_per_token(), self.kv_cache_bytes_per_token(as_gqa=True)
        line += f", KV cache {kv:,} bytes/token (bf16)"
        if kv != kv_gqa:
            line += f" vs {kv_gqa:,} as GQA with {self.n_kv_heads} kv heads"
        return line


# Sizes from the CPU default up to ~1.3B. GPT-2-like widths so results compare with the literature; the names are the
# parameter counts with GPT-2's 50257-token vocab (tests/unit/test_model.py checks them). tiny and small are for CPU
# runs with the built-in ~2k vocab (about 1M and 5M parameters there).
_BASE = dict(rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True, qk_norm=False, init_std=0.02)
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(_BASE, n_layers=4, d_model=128, n_heads=4, n_kv_heads=2, ffn_hidden=384, max_seq_len=256),
    "small": dict(_BASE, n_layers=6, d_model=256, n_heads=8, n_kv_heads=4, ffn_hidden=None, max_seq_len=512),
    # GPT-2 small's shape with SwiGLU at 8/3 width: 123.6M
    "124m": dict(_BASE, n_layers=12, d_model=768, n_heads=12, n_kv_heads=12, ffn_hidden=2048, max_seq_len=1024),
    # GPT-2 medium's depth and width, GQA 2:1; the FFN (3x) takes back what GQA saves: 353.4M
    "350m": dict(_BASE, n_layers=24, d_model=1024, n_heads=16, n_kv_heads=8, ffn_hidden=3072, max_seq_len=2048),
    # GPT-2 large's depth and width, GQA 5:1 (a small decode cache), FFN 3.2x: 772.1M
    "774m": dict(_BASE, n_layers=36, d_model=1280, n_heads=20, n_kv_heads=4, ffn_hidden=4096, max_seq_len=2048,
                 rope_theta=500000.0),
    # head_dim 128 and an untied head, as in Llama (at this size the head is a small share of the weights): 1.34B
    "1.3b": dict(_BASE, n_layers=24, d_model=2048, n_heads=16, n_kv_heads=8, ffn_hidden=5632, max_seq_len=2048,
                 rope_theta=500000.0, tie_embeddings=False),
}
