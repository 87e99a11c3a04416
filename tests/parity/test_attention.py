"""Parity tests for llm_core.model.attention: every backend against an fp64 reference, and the Triton
kernel against fp32 with flash-attn's tolerance rule (at most 2x the error of PyTorch run in
the same precision). Without CUDA the kernel runs in Triton's CPU interpreter."""

import os
import sys

import pytest
import torch

CPU_INTERPRETER = not torch.cuda.is_available()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Triton reads TRITON_INTERPRET when it (and each @triton.jit) is first imported; set it later
# and the kernels are neither compiled nor interpreted.
_TRITON_TOO_EARLY = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if CPU_INTERPRETER:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from llm_core.model.attention import BACKENDS, attention, naive_attention  # noqa: E402

try:
    from llm_core.model.attention import flash  # noqa: E402
except ImportError:  # triton is Linux-only
    flash = None

if flash is None:
    _skip_reason = "triton is not installed"
elif CPU_INTERPRETER and os.environ.get("TRITON_INTERPRET") != "1":
    _skip_reason = "no CUDA, and TRITON_INTERPRET is set to something other than 1"
elif CPU_INTERPRETER and _TRITON_TOO_EARLY:
    _skip_reason = "triton was imported before TRITON_INTERPRET=1 was set; export TRITON_INTERPRET=1 to run these"
else:
    _skip_reason = ""
needs_triton = pytest.mark.skipif(bool(_skip_reason), reason=_skip_reason)


def _reference(q, k, v, causal, scale=None):
    """Attention straight from its definition in float64, one query head at a time."""
    q, k, v = q.double(), k.double(), v.double()
    num_heads, seq_q, head_dim = q.shape[1], q.shape[2], q.shape[3]
    num_kv_heads, seq_k = k.shape[1], k.shape[2]
    group = num_heads // num_kv_heads
    scale = head_dim**-0.5 if scale is None else scale
    i = torch.arange(seq_q, device=q.device)[:, None]
    j = torch.arange(seq_k, device=q.device)[None, :]
    visible = j <= i + (seq_k - seq_q) if causal else torch.ones(seq_q, seq_k, dtype=torch.bool, device=q.device)
    has_key = visible.any(dim=-1, keepdim=True)
    outs = []
    for h in range(num_heads):
        scores = (q[:, h] @ k[:, h // group].transpose(-1, -2)) * scale
        probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        probs = torch.where(has_key, probs, 0.0)
        outs.append(probs @ v[:, h // group])
    return torch.stack(outs, dim=1)


def _same_precision(q, k, v, causal, scale=None):
    """The naive computation kept in the input dtype: the error budget a fused kernel is held to."""
    group = q.shape[1] // k.shape[1]
    seq_q, seq_k = q.shape[2], k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    if causal:
        mask = torch.ones(seq_q, seq_k, dtype=torch.bool, device=q.device).tril(seq_k - seq_q)
        has_key = mask.any(dim=-1, keepdim=True)
        scores = scores.masked_fill(~(mask | ~has_key), float("-inf"))
        return (torch.softmax(scores, dim=-1) * has_key) @ v
    return torch.softmax(scores, dim=-1) @ v


def _inputs(batch, heads, kv_heads, seq_q, seq_k, head_dim, dtype, seed=0):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=DEVICE, dtype=torch.float32).to(dtype)

    q = rand(batch, heads, seq_q, head_dim)
    k = rand(batch, kv_heads, seq_k, head_dim)
    v = rand(batch, kv_heads, seq_k, head_dim)
    do = rand(batch, heads, seq_q, head_dim)
    return q, k, v, do


def _forward_backward(fn, q, k, v, do, dtype=None):
    """Output and (dq, dk, dv) of fn on fresh leaves, optionally cast to dtype first."""
    dtype = dtype or q.dtype
    leaves = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
    out = fn(*leaves)
    out.backward(do.to(out.dtype))
    return [out.detach()] + [x.grad for x in leaves]


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def _roundoff(ref, dtype):
    # flash-attn's absolute slack: the rounding error of the reference values in dtype.
    r = ref.to(dtype)
    return 2 * _max_err(r + 0.3 - 0.3, r)


# --------------------------------------------------------------------------------------------
# (1) every backend agrees with the definition in fp32
# --------------------------------------------------------------------------------------------

SHAPES = {
    # name: (heads, kv_heads, seq_q, seq_k, causal)
    "causal": (4, 4, 33, 33, True),
    "full": (4, 4, 33, 33, False),
    "gqa_4_2": (4, 2, 33, 33, True),
    "mqa_4_1": (4, 1, 33, 33, True),
    "chunked_prefill": (4, 2, 17, 40, True),
    "decode": (4, 2, 1, 40, True),
    "more_queries_than_keys": (4, 2, 40, 17, True),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_definition_fp32(backend, shape):
    if backend == "triton" and _skip_reason:
        pytest.skip(_skip_reason)
    heads, kv_heads, seq_q, seq_k, causal = shape
    q, k, v, do = _inputs(2, heads, kv_heads, seq_q, seq_k, 32, torch.float32)
    got = _forward_backward(lambda q, k, v: attention(q, k, v, causal=causal, backend=backend), q, k, v, do)
    ref = _forward_backward(lambda q, k, v: _reference(q, k, v, causal), q, k, v, do, dtype=torch.float64)
    assert got[0].shape == q.shape and got[0].dtype == torch.float32
    for name, g, r, atol in zip(("out", "dq", "dk", "dv"), got, ref, (2e-5, 1e-4, 1e-4, 1e-4)):
        assert torch.isfinite(r).all(), name
        assert _max_err(g, r) <= atol, f"{backend} {name}: max error {_max_err(g, r):.2e} > {atol}"


def test_bottom_right_causal_semantics():
    # A decode step sees the whole cache; the last rows of a square causal call equal a chunk
    # whose keys are the full prefix.
    q, k, v, _ = _inputs(1, 2, 2, 9, 9, 32, torch.float32)
    decode = attention(q[:, :, -1:], k, v, causal=True, backend="naive")
    full = attention(q[:, :, -1:], k, v, causal=False, backend="naive")
    torch.testing.assert_close(decode, full)
    chunk = attention(q[:, :, 5:], k, v, causal=True, backend="sdpa")
    square = attention(q, k, v, causal=True, backend="sdpa")
    torch.testing.assert_close(chunk, square[:, :, 5:])


# --------------------------------------------------------------------------------------------
# (2) the Triton kernel: outputs and gradients vs fp32, ragged lengths, every dtype
# --------------------------------------------------------------------------------------------

KERNEL_CASES = {
    # name: (batch, heads, kv_heads, seq_q, seq_k, head_dim, dtype, causal)
    "d32_fp32_causal_17": (1, 2, 2, 17, 17, 32, torch.float32, True),
    "d32_fp32_full_100_mqa": (1, 2, 1, 100, 100, 32, torch.float32, False),
    "d64_fp16_causal_33_gqa": (1, 4, 2, 33, 33, 64, torch.float16, True),
    "d64_bf16_full_33_mqa": (1, 4, 1, 33, 33, 64, torch.bfloat16, False),
    "d64_fp32_causal_more_q_than_k": (2, 2, 1, 33, 17, 64, torch.float32, True),
    "d128_bf16_causal_prefill_17_of_100": (1, 2, 1, 17, 100, 128, torch.bfloat16, True),
    "d128_fp16_causal_100": (1, 2, 2, 100, 100, 128, torch.float16, True),
    "d128_fp16_decode": (1, 4, 2, 1, 33, 128, torch.float16, True),
}


def _check_kernel(batch, heads, kv_heads, seq_q, seq_k, head_dim, dtype, causal, seed=0):
    q, k, v, do = _inputs(batch, heads, kv_heads, seq_q, seq_k, head_dim, dtype, seed=seed)
    ours = _forward_backward(lambda q, k, v: flash.flash_attention(q, k, v, causal=causal), q, k, v, do)
    ref = _forward_backward(lambda q, k, v: _reference(q, k, v, causal).float(), q, k, v, do, dtype=torch.float32)
    assert ours[0].dtype == dtype and ours[0].shape == q.shape
    assert [g.shape for g in ours[1:]] == [q.shape, k.shape, v.shape]
    names = ("out", "dq", "dk", "dv")
    if dtype == torch.float32:
        for name, o, r, atol in zip(names, ours, ref, (2e-5, 1e-4, 1e-4, 1e-4)):
            assert _max_err(o, r) <= atol, f"{name}: max error {_max_err(o, r):.2e} > {atol}"
        return
    pt = _forward_backward(lambda q, k, v: _same_precision(q, k, v, causal), q, k, v, do)
    for name, o, p, r in zip(names, ours, pt, ref):
        ours_err, pt_err = _max_err(o, r), _max_err(p, r)
        bound = 2 * pt_err + _roundoff(r, dtype)
        assert ours_err <= bound, f"{name}: error {ours_err:.2e} > 2 x PyTorch {dtype} error {pt_err:.2e} + slack"


@needs_triton
@pytest.mark.parametrize("case", KERNEL_CASES.values(), ids=KERNEL_CASES.keys())
def test_flash_kernel_matches_fp32(case):
    _check_kernel(*case)


@needs_triton
def test_flash_kernel_non_contiguous_inputs():
    # (batch, seq, heads, dim) storage viewed as (batch, heads, seq, dim), as a model's q/k/v
    # projections produce it; plus a custom scale.
    q, k, v, do = _inputs(1, 4, 2, 33, 33, 32, torch.float32)
    qt, kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    assert not qt.is_contiguous()
    ours = _forward_backward(lambda q, k, v: flash.flash_attention(q, k, v, causal=True, scale=0.3), qt, kt, vt, do)
    ref = _forward_backward(lambda q, k, v: _reference(q, k, v, True, scale=0.3), q, k, v, do, dtype=torch.float64)
    for o, r in zip(ours, ref):
        assert _max_err(o, r) <= 1e-4


@needs_triton
@pytest.mark.parametrize("causal,seq_q", [(True, 40), (False, 40), (True, 17)])
def test_flash_kernel_under_other_block_sizes(causal, seq_q):
    """A tuning candidate (blocks of 32 x 16 instead of the interpreter's 16 x 16, GQA, ragged tails, a chunked
    prefill) computes the same attention: the tuner may only choose among correct configs."""
    from llm_core.model.attention import flash_config

    q, k, v, do = _inputs(1, 4, 2, seq_q, 40, 32, torch.float32)
    other = {kernel: {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 1, "num_stages": 1} for kernel in flash_config.KERNELS}
    with flash_config.launch_override(other):
        assert flash_config.launch_config(32, 4, on_gpu=False)["dkdv"] == other["dkdv"]
        ours = _forward_backward(lambda q, k, v: flash.flash_attention(q, k, v, causal=causal), q, k, v, do)
    assert flash_config.launch_config(32, 4, on_gpu=False)["dkdv"]["BLOCK_M"] == 16  # restored on exit
    ref = _forward_backward(lambda q, k, v: _reference(q, k, v, causal), q, k, v, do, dtype=torch.float64)
    for o, r in zip(ours, ref):
        assert _max_err(o, r) <= 1e-4


def test_launch_table_covers_the_gpu_cases_and_tuning_starts_from_it(monkeypatch):
    from llm_core.model.attention import flash_config as fc

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # read at each call: the GPU table, not the interpreter's blocks
    for head_dim in flash.SUPPORTED_HEAD_DIMS if flash is not None else (32, 64, 128):
        for size in (2, 4):
            cfg = fc.launch_config(head_dim, size, on_gpu=True)
            assert set(cfg) == {"fwd", "dkdv", "dq", "pre"}
    assert fc.launch_config(128, 2, on_gpu=True)["fwd"] == fc.LAUNCH_CONFIGS[(128, 2)]["fwd"]
    for head_dim, kernels in fc.TUNE_CANDIDATES.items():
        for kernel, candidates in kernels.items():
            assert candidates[0] == fc.LAUNCH_CONFIGS[(head_dim, 2)][kernel]  # the table is always a candidate
    with pytest.raises(ValueError, match="unknown kernels"):
        with fc.launch_override({"bwd": {}}):
            pass


# --------------------------------------------------------------------------------------------
# (3) determinism: no atomics, fixed accumulation order
# --------------------------------------------------------------------------------------------


@needs_triton
def test_flash_kernel_is_deterministic():
    q, k, v, do = _inputs(1, 4, 2, 33, 33, 64, torch.float16)
    runs = [
        _forward_backward(lambda q, k, v: flash.flash_attention(q, k, v, causal=True), q, k, v, do)
        for _ in range(3)
    ]
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# (4) bad input is rejected with a message that names the problem
# --------------------------------------------------------------------------------------------


def _t(*shape, dtype=torch.float32, device=DEVICE):
    return torch.zeros(*shape, dtype=dtype, device=device)


BAD_INPUTS = {
    "three_dims": ((_t(2, 8, 32), _t(2, 8, 32), _t(2, 8, 32)), "4-D"),
    "k_v_shapes_differ": ((_t(1, 2, 8, 32), _t(1, 2, 8, 32), _t(1, 2, 9, 32)), "k and v must (have the same shape|agree on batch, kv_heads and seq_k)"),
    "head_dims_differ": ((_t(1, 2, 8, 32), _t(1, 2, 8, 64), _t(1, 2, 8, 64)), "head_dim"),
    "kv_heads_not_dividing": ((_t(1, 4, 8, 32), _t(1, 3, 8, 32), _t(1, 3, 8, 32)), "must divide"),
}

FLASH_ONLY_BAD_INPUTS = {
    "head_dim_48": ((_t(1, 2, 8, 48), _t(1, 2, 8, 48), _t(1, 2, 8, 48)), "head_dim in"),
    "dtype_mismatch": ((_t(1, 2, 8, 32), _t(1, 2, 8, 32, dtype=torch.float16), _t(1, 2, 8, 32)), "one dtype"),
    "integer_dtype": ((_t(1, 2, 8, 32, dtype=torch.int32),) * 3, "float32, float16 and bfloat16"),
    "device_mismatch": ((_t(1, 2, 8, 32), _t(1, 2, 8, 32, device="meta"), _t(1, 2, 8, 32)), "one device"),
    "empty_sequence": ((_t(1, 2, 0, 32), _t(1, 2, 8, 32), _t(1, 2, 8, 32)), "empty sequence"),
}


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
@pytest.mark.parametrize("args,match", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_dispatch_rejects_bad_shapes(backend, args, match):
    with pytest.raises(ValueError, match=match):
        attention(*args, backend=backend)


@needs_triton
@pytest.mark.parametrize("args,match", {**BAD_INPUTS, **FLASH_ONLY_BAD_INPUTS}.values(),
                         ids={**BAD_INPUTS, **FLASH_ONLY_BAD_INPUTS}.keys())
def test_flash_rejects_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        flash.flash_attention(*args)


def test_unknown_backend_names_the_allowed_values():
    q = _t(1, 2, 8, 32)
    with pytest.raises(ValueError, match="allowed values: sdpa, triton, naive"):
        attention(q, q, q, backend="flash")


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only error path")
def test_flash_on_cpu_without_interpreter_explains_itself(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = _t(1, 2, 8, 32, device="cpu")
    with pytest.raises(ValueError, match=r"model.attention=sdpa.*TRITON_INTERPRET=1 dvc exp run"):
        flash.flash_attention(q, q, q)


# --------------------------------------------------------------------------------------------
# (5) real GPU: model-sized shapes, longer sequences, more repetitions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_kind", ["none", "rows", "heads"])
@pytest.mark.parametrize("kv_heads,v_dim", [(2, 32), (1, 32), (4, 16)], ids=["gqa", "mqa", "v_dim_16"])
@pytest.mark.parametrize("batch", [1, 16], ids=["sdpa", "bmm"])  # 4 or 64 (row, head) pairs
def test_one_query_on_the_cpu_matches_the_definition(batch, kv_heads, v_dim, mask_kind):
    # the decode step's paths on the CPU (SDPA for few (row, head) pairs, two bmm over batch x kv heads for many),
    # keys read from a cache slice as the engine does: a (batch, kv, max_len, d) buffer cut to the filled length
    g = torch.Generator().manual_seed(3)
    q = torch.randn(batch, 4, 1, 32, generator=g)
    k = torch.randn(batch, kv_heads, 64, 32, generator=g)[:, :, :40]
    v = torch.randn(batch, kv_heads, 64, v_dim, generator=g)[:, :, :40]
    lengths = torch.tensor([40, 7, 23, 1, 39, 12, 40, 2] * 2)[:batch]
    mask = None
    if mask_kind == "rows":  # ragged rows: each sees its own filled part
        mask = (torch.arange(40) < lengths[:, None])[:, None, None]  # (batch, 1, 1, 40)
    elif mask_kind == "heads":  # one mask per head
        mask = torch.rand(batch, 4, 1, 40, generator=g) > 0.3
        mask[..., 0] = True
    got = attention(q, k, v, causal=True, backend="sdpa", mask=mask)
    ref = naive_attention(q.double(), k.double(), v.double(), causal=True, mask=mask)
    assert got.shape == (batch, 4, 1, v_dim) and _max_err(got, ref) <= 2e-6
    bf16 = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True, mask=mask)
    assert bf16.dtype == torch.bfloat16 and _max_err(bf16, ref) <= 0.03


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@needs_triton
class TestFlashOnGPU:
    @pytest.mark.parametrize("head_dim", [64, 128])
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    @pytest.mark.parametrize("causal", [True, False])
    def test_large_shapes(self, head_dim, dtype, causal):
        _check_kernel(2, 8, 2, 1000, 1000, head_dim, dtype, causal)

    @pytest.mark.parametrize("seq_q,seq_k", [(1, 2048), (129, 1100), (2048, 2048)])
    def test_kv_cache_shapes(self, seq_q, seq_k):
        _check_kernel(2, 8, 2, seq_q, seq_k, 128, torch.bfloat16, True)

    def test_fp32_and_head_dim_32(self):
        _check_kernel(1, 4, 4, 513, 513, 32, torch.float32, True)

    def test_deterministic_over_many_runs(self):
        q, k, v, do = _inputs(2, 8, 2, 1024, 1024, 128, torch.bfloat16)
        first = _forward_backward(lambda q, k, v: flash.flash_attention(q, k, v, causal=True), q, k, v, do)
        for _ in range(10):
            again = _forward_backward(lambda q, k, v: flash.flash_attention(q, k, v, causal=True), q, k, v, do)
            assert all(torch.equal(a, b) for a, b in zip(first, again))

    def test_dispatch_agrees_with_sdpa(self):
        q, k, v, _ = _inputs(2, 8, 2, 333, 1024, 128, torch.bfloat16)
        ours = attention(q, k, v, causal=True, backend="triton")
        ref = _reference(q, k, v, True)
        sdpa = attention(q, k, v, causal=True, backend="sdpa")
        assert _max_err(ours, ref) <= 2 * _max_err(sdpa, ref) + _roundoff(ref, torch.bfloat16)
