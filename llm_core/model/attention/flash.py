"""Flash-Attention-2 in Triton: fused forward and backward, causal or full, with GQA.

The structure follows Triton's tutorial ``06-fused-attention`` and the FA2 paper (Dao, 2023):
the forward streams K/V blocks past a resident Q block with an online softmax and saves the
row log-sum-exp; the backward recomputes P from it. The backward is three launches: a
preprocess for delta = rowsum(dO * O), one kernel that owns a K/V block and walks the queries
(dK, dV), one that owns a Q block and walks the keys (dQ). Every output element is written by
exactly one program and accumulated in a fixed order, so results are bitwise reproducible
(no atomics). For GQA the dK/dV program loops over the query heads of its group itself.

Supported: q (batch, heads, seq_q, head_dim), k/v (batch, kv_heads, seq_k, head_dim) with
kv_heads dividing heads; head_dim 32, 64 or 128; fp32, fp16 or bf16 (q, k, v alike); any
seq_q and seq_k (ragged tails are masked), causal masks bottom-right aligned when
seq_q != seq_k; arbitrary strides. fp32 inputs use IEEE fp32 dots (no TF32), so they match
PyTorch's default precision. Runs on CUDA, or on CPU under ``TRITON_INTERPRET=1`` (set before
triton is imported) for testing.

Launch configurations (block sizes, warps, pipeline stages per kernel and head dim) live in `flash_config.py`, fixed
in code and tuned on a GPU by `bench/attention.py --tune`. Resources, compiled offline with triton 3.9 for sm_90
(`bench/flash_compile.py`): the bf16 forward needs 80 KB of shared memory per program at head dim 64 and 128 KB at
head dim 128, the backward kernels 41-64 KB; no spills. That fits H100/H200 (227 KB) and A100 (163 KB, where the
forward needs 64 / 96 KB); sm_86/sm_89 parts (99 KB: L40S, RTX 4090) cannot launch the head-dim-128 forward.

Measured on: not yet measured on a GPU; see bench/RESULTS.md.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
import triton
import triton.language as tl

from .flash_config import interpreting as _interpreting
from .flash_config import launch_config

__all__ = ["flash_attention"]

SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------


@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i, q,
    k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
    offs_m, offs_d, lo, hi, qk_scale, seq_k, causal_offset,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, IO_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    # MASKED=False is the bulk of the work: key blocks that every row of the Q block fully sees,
    # so the loop carries no bounds checks or where().
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kT_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd  # (D, BLOCK_N)
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd  # (BLOCK_N, D)
        if MASKED:
            kT = tl.load(kT_ptrs, mask=offs_n[None, :] < seq_k, other=0.0).to(DOT_DTYPE)
            v = tl.load(v_ptrs, mask=offs_n[:, None] < seq_k, other=0.0).to(DOT_DTYPE)
        else:
            kT = tl.load(kT_ptrs).to(DOT_DTYPE)
            v = tl.load(v_ptrs).to(DOT_DTYPE)
        qk = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        if MASKED:
            keep = offs_n[None, :] < seq_k
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + causal_offset)
            qk = tl.where(keep, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        if MASKED:
            # A row that has seen no visible key yet still has m = -inf; shifting by 0 instead
            # makes exp2 return 0 rather than NaN (-inf - -inf).
            m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_shift = m_new
        p = tl.math.exp2(qk - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(IO_DTYPE).to(DOT_DTYPE), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(
    Q, K, V, O, LSE, scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    num_heads, seq_q, seq_k,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, IO_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    off_b = (off_bh // num_heads).to(tl.int64)
    off_h = (off_bh % num_heads).to(tl.int64)
    off_hk = off_h // GROUP

    q_base = Q + off_b * stride_qb + off_h * stride_qh
    k_base = K + off_b * stride_kb + off_hk * stride_kh
    v_base = V + off_b * stride_vb + off_hk * stride_vh
    o_base = O + off_b * stride_ob + off_h * stride_oh

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seq_q
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
    q = q.to(DOT_DTYPE)

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    qk_scale = scale * 1.4426950408889634  # log2(e): scores live in base 2, exp2 is native

    # Bottom-right causal: query i sees keys j <= i + causal_offset.
    causal_offset = seq_k - seq_q
    full_tail = (seq_k // BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi = tl.maximum(tl.minimum(seq_k, start_m + BLOCK_M + causal_offset), 0)
        full_end = tl.minimum((tl.maximum(start_m + causal_offset + 1, 0) // BLOCK_N) * BLOCK_N, full_tail)
    else:
        hi = seq_k
        full_end = full_tail
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
        offs_m, offs_d, 0, full_end, qk_scale, seq_k, causal_offset,
        BLOCK_N, False, CAUSAL, DOT_PRECISION, IO_DTYPE, DOT_DTYPE,
    )
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
        offs_m, offs_d, full_end, hi, qk_scale, seq_k, causal_offset,
        BLOCK_N, True, CAUSAL, DOT_PRECISION, IO_DTYPE, DOT_DTYPE,
    )

    # Rows with no visible key output 0; their LSE of +inf makes the backward's P exactly 0.
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    acc = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(l_safe))
    tl.store(LSE + off_bh.to(tl.int64) * seq_q + offs_m, lse, mask=row_ok)
    o_ptrs = o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None])


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------


@triton.jit
def _attn_bwd_preprocess(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    num_heads, seq_q,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    off_bh = tl.program_id(1)
    off_b = (off_bh // num_heads).to(tl.int64)
    off_h = (off_bh % num_heads).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seq_q
    o = tl.load(
        O + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
        mask=row_ok[:, None], other=0.0,
    ).to(tl.float32)
    do = tl.load(
        DO + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod,
        mask=row_ok[:, None], other=0.0,
    ).to(tl.float32)
    tl.store(DELTA + off_bh.to(tl.int64) * seq_q + offs_m, tl.sum(o * do, axis=1), mask=row_ok)


@triton.jit
def _attn_bwd_dkdv_inner(
    dk, dv, k, v,
    q_base, do_base, lse_base, delta_base,
    stride_qm, stride_qd, stride_dom, stride_dod,
    offs_n, offs_d, lo, hi, qk_scale, seq_q, causal_offset,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
    DOT_PRECISION: tl.constexpr, IO_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    # Works in the transposed frame (keys x queries) so dK and dV come out of plain dots.
    # Query rows past seq_q load q = dO = 0 and LSE = +inf, hence P = 0: no row mask needed.
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < seq_q
        qT_ptrs = q_base + offs_m[None, :] * stride_qm + offs_d[:, None] * stride_qd  # (D, BLOCK_M)
        qT = tl.load(qT_ptrs, mask=row_ok[None, :], other=0.0).to(DOT_DTYPE)
        lse = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf"))
        qkT = tl.dot(k, qT, input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        pT = tl.math.exp2(qkT - lse[None, :])
        if MASKED:
            pT = tl.where(offs_n[:, None] <= offs_m[None, :] + causal_offset, pT, 0.0)
        do_ptrs = do_base + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod  # (BLOCK_M, D)
        do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0).to(DOT_DTYPE)
        dv = tl.dot(pT.to(IO_DTYPE).to(DOT_DTYPE), do, dv, input_precision=DOT_PRECISION)
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(IO_DTYPE).to(DOT_DTYPE), tl.trans(qT), dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    num_heads, num_kv_heads, seq_q, seq_k,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, IO_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    start_n = tl.program_id(0) * BLOCK_N
    off_bhk = tl.program_id(1)
    off_b = (off_bhk // num_kv_heads).to(tl.int64)
    off_hk = (off_bhk % num_kv_heads).to(tl.int64)

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < seq_k
    k = tl.load(
        K + off_b * stride_kb + off_hk * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
        mask=col_ok[:, None], other=0.0,
    ).to(DOT_DTYPE)
    v = tl.load(
        V + off_b * stride_vb + off_hk * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
        mask=col_ok[:, None], other=0.0,
    ).to(DOT_DTYPE)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    qk_scale = scale * 1.4426950408889634  # log2(e): scores live in base 2, exp2 is native

    causal_offset = seq_k - seq_q
    if CAUSAL:
        # First query that sees key start_n, and first query that sees the whole key block.
        lo = (tl.maximum(start_n - causal_offset, 0) // BLOCK_M) * BLOCK_M
        full_start = tl.maximum(start_n + BLOCK_N - 1 - causal_offset, 0)
        full_start = tl.minimum(tl.cdiv(full_start, BLOCK_M), tl.cdiv(seq_q, BLOCK_M)) * BLOCK_M
        full_start = tl.maximum(full_start, lo)
    else:
        lo = 0
        full_start = 0

    for g in range(GROUP):
        off_h = off_hk * GROUP + g
        off_bh = off_b * num_heads + off_h
        q_base = Q + off_b * stride_qb + off_h * stride_qh
        do_base = DO + off_b * stride_dob + off_h * stride_doh
        lse_base = LSE + off_bh * seq_q
        delta_base = DELTA + off_bh * seq_q
        dk, dv = _attn_bwd_dkdv_inner(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base,
            stride_qm, stride_qd, stride_dom, stride_dod,
            offs_n, offs_d, lo, full_start, qk_scale, seq_q, causal_offset,
            BLOCK_M, True, DOT_PRECISION, IO_DTYPE, DOT_DTYPE,
        )
        dk, dv = _attn_bwd_dkdv_inner(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base,
            stride_qm, stride_qd, stride_dom, stride_dod,
            offs_n, offs_d, full_start, seq_q, qk_scale, seq_q, causal_offset,
            BLOCK_M, False, DOT_PRECISION, IO_DTYPE, DOT_DTYPE,
        )

    dk *= scale
    dk_ptrs = DK + off_b * stride_dkb + off_hk * stride_dkh
    dk_ptrs += offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd
    dv_ptrs = DV + off_b * stride_dvb + off_hk * stride_dvh
    dv_ptrs += offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _attn_bwd_dq_inner(
    dq, q, do, lse, delta,
    k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
    offs_m, offs_d, lo, hi, qk_scale, seq_k, causal_offset,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr, IO_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kT_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd  # (D, BLOCK_N)
        vT_ptrs = v_base + offs_n[None, :] * stride_vn + offs_d[:, None] * stride_vd
        if MASKED:
            kT = tl.load(kT_ptrs, mask=offs_n[None, :] < seq_k, other=0.0).to(DOT_DTYPE)
            vT = tl.load(vT_ptrs, mask=offs_n[None, :] < seq_k, other=0.0).to(DOT_DTYPE)
        else:
            kT = tl.load(kT_ptrs).to(DOT_DTYPE)
            vT = tl.load(vT_ptrs).to(DOT_DTYPE)
        qk = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale
        p = tl.math.exp2(qk - lse[:, None])
        if MASKED:
            keep = offs_n[None, :] < seq_k
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + causal_offset)
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, vT, input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(IO_DTYPE).to(DOT_DTYPE), tl.trans(kT), dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ, scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    num_heads, seq_q, seq_k,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, IO_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    off_b = (off_bh // num_heads).to(tl.int64)
    off_h = (off_bh % num_heads).to(tl.int64)
    off_hk = off_h // GROUP

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seq_q
    q = tl.load(
        Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
        mask=row_ok[:, None], other=0.0,
    ).to(DOT_DTYPE)
    do = tl.load(
        DO + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod,
        mask=row_ok[:, None], other=0.0,
    ).to(DOT_DTYPE)
    lse = tl.load(LSE + off_bh.to(tl.int64) * seq_q + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + off_bh.to(tl.int64) * seq_q + offs_m, mask=row_ok, other=0.0)
    k_base = K + off_b * stride_kb + off_hk * stride_kh
    v_base = V + off_b * stride_vb + off_hk * stride_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    qk_scale = scale * 1.4426950408889634  # log2(e): scores live in base 2, exp2 is native

    causal_offset = seq_k - seq_q
    full_tail = (seq_k // BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi = tl.maximum(tl.minimum(seq_k, start_m + BLOCK_M + causal_offset), 0)
        full_end = tl.minimum((tl.maximum(start_m + causal_offset + 1, 0) // BLOCK_N) * BLOCK_N, full_tail)
    else:
        hi = seq_k
        full_end = full_tail
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
        offs_m, offs_d, 0, full_end, qk_scale, seq_k, causal_offset,
        BLOCK_N, False, CAUSAL, DOT_PRECISION, IO_DTYPE, DOT_DTYPE,
    )
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
        offs_m, offs_d, full_end, hi, qk_scale, seq_k, causal_offset,
        BLOCK_N, True, CAUSAL, DOT_PRECISION, IO_DTYPE, DOT_DTYPE,
    )
    dq *= scale
    dq_ptrs = DQ + off_b * stride_dqb + off_h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


# --------------------------------------------------------------------------------------------
# launch configuration and the autograd wrapper
# --------------------------------------------------------------------------------------------


_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _dtype_args(dtype: torch.dtype) -> dict:
    """Compile-time dtype parameters shared by the kernels.

    DOT_PRECISION: TF32 would cost fp32 inputs ~3 decimal digits, so fp32 runs IEEE dots;
    16-bit inputs ignore the setting. DOT_DTYPE is the operand type of the dots, the input
    dtype on GPUs; the interpreter multiplies bf16 tiles as raw uint16 bits, so there bf16
    operands are widened to fp32 after being rounded to bf16 (IO_DTYPE), which keeps the
    rounding of a bf16 kernel without relying on that broken path.
    """
    io = _TL_DTYPES[dtype]
    dot = tl.float32 if (_interpreting() and dtype == torch.bfloat16) else io
    return {"DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32", "IO_DTYPE": io, "DOT_DTYPE": dot}


def _on_device(t: torch.Tensor):
    # Triton launches on the current CUDA device, which need not be the tensors' device.
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        batch, num_heads, seq_q, head_dim = q.shape
        num_kv_heads, seq_k = k.shape[1], k.shape[2]
        group = num_heads // num_kv_heads
        cfg = launch_config(head_dim, q.element_size(), q.is_cuda)
        dtypes = _dtype_args(q.dtype)

        o = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = torch.empty((batch, num_heads, seq_q), device=q.device, dtype=torch.float32)
        fwd = cfg["fwd"]
        grid = (triton.cdiv(seq_q, fwd["BLOCK_M"]), batch * num_heads)
        with _on_device(q):
            _attn_fwd[grid](
                q, k, v, o, lse, scale,
                *q.stride(), *k.stride(), *v.stride(), *o.stride(),
                num_heads, seq_q, seq_k,
                GROUP=group, HEAD_DIM=head_dim, BLOCK_M=fwd["BLOCK_M"], BLOCK_N=fwd["BLOCK_N"],
                CAUSAL=causal, **dtypes,
                num_warps=fwd["num_warps"], num_stages=fwd["num_stages"],
            )
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        batch, num_heads, seq_q, head_dim = q.shape
        num_kv_heads, seq_k = k.shape[1], k.shape[2]
        group = num_heads // num_kv_heads
        cfg = launch_config(head_dim, q.element_size(), q.is_cuda)
        dtypes = _dtype_args(q.dtype)
        if do.dtype != q.dtype:
            do = do.to(q.dtype)

        with _on_device(q):
            delta = torch.empty_like(lse)
            pre = cfg["pre"]
            _attn_bwd_preprocess[(triton.cdiv(seq_q, pre["BLOCK_M"]), batch * num_heads)](
                o, do, delta, *o.stride(), *do.stride(), num_heads, seq_q,
                HEAD_DIM=head_dim, BLOCK_M=pre["BLOCK_M"],
            )

            dq = torch.empty_like(q, memory_format=torch.contiguous_format)
            dk = torch.empty_like(k, memory_format=torch.contiguous_format)
            dv = torch.empty_like(v, memory_format=torch.contiguous_format)
            kv = cfg["dkdv"]
            _attn_bwd_dkdv[(triton.cdiv(seq_k, kv["BLOCK_N"]), batch * num_kv_heads)](
                q, k, v, do, lse, delta, dk, dv, ctx.scale,
                *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
                num_heads, num_kv_heads, seq_q, seq_k,
                GROUP=group, HEAD_DIM=head_dim, BLOCK_M=kv["BLOCK_M"], BLOCK_N=kv["BLOCK_N"],
                CAUSAL=ctx.causal, **dtypes,
                num_warps=kv["num_warps"], num_stages=kv["num_stages"],
            )
            qc = cfg["dq"]
            _attn_bwd_dq[(triton.cdiv(seq_q, qc["BLOCK_M"]), batch * num_heads)](
                q, k, v, do, lse, delta, dq, ctx.scale,
                *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
                num_heads, seq_q, seq_k,
                GROUP=group, HEAD_DIM=head_dim, BLOCK_M=qc["BLOCK_M"], BLOCK_N=qc["BLOCK_N"],
                CAUSAL=ctx.causal, **dtypes,
                num_warps=qc["num_warps"], num_stages=qc["num_stages"],
            )
        return dq, dk, dv, None, None


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "flash_attention expects 4-D tensors q (batch, heads, seq_q, head_dim) and k, v "
            f"(batch, kv_heads, seq_k, head_dim); got q{tuple(q.shape)}, k{tuple(k.shape)}, v{tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(f"flash_attention: k and v must have the same shape; got k{tuple(k.shape)}, v{tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"flash_attention: q and k must agree on batch and head_dim; got q{tuple(q.shape)}, k{tuple(k.shape)}"
        )
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"flash_attention: kv_heads ({k.shape[1]}) must divide heads ({q.shape[1]})")
    if q.shape[3] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"flash_attention supports head_dim in {SUPPORTED_HEAD_DIMS}, got {q.shape[3]}; "
            "use attention(..., backend='sdpa') for other sizes"
        )
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"flash_attention supports float32, float16 and bfloat16, got {q.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"flash_attention: q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"flash_attention: q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"the triton attention backend (model.attention=triton) runs on CUDA tensors, got {q.device.type}. "
            "On CPU use model.attention=sdpa, or run the kernel in Triton's (slow) interpreter by setting "
            "TRITON_INTERPRET=1 in the environment before Python starts, e.g. "
            "`TRITON_INTERPRET=1 dvc exp run -S model.attention=triton`"
        )
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError(f"flash_attention: empty sequence (seq_q={q.shape[2]}, seq_k={k.shape[2]})")


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """Fused attention softmax(q k^T * scale) v, differentiable in q, k and v.

    q: (batch, heads, seq_q, head_dim); k, v: (batch, kv_heads, seq_k, head_dim), kv_heads
    dividing heads; head_dim in {32, 64, 128}; dtype float32, float16 or bfloat16.
    ``causal`` masks bottom-right (query i sees keys j <= i + seq_k - seq_q); rows that see no
    key return 0. ``scale`` defaults to 1/sqrt(head_dim). Returns q's shape and dtype.
    """
    _check_inputs(q, k, v)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    return _FlashAttention.apply(q, k, v, bool(causal), float(scale))
