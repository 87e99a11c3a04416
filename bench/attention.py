"""Benchmark our Triton flash-attention against PyTorch SDPA, measured in the same run.

On CUDA: causal attention in bf16 at seq 1k-8k and head_dim 64/128, batch chosen so every
config holds ~16k tokens (heads x head_dim = 2048, a ~1B model's width); SDPA is pinned to its
FlashAttention backend. Reports forward and forward+backward TFLOP/s and ours/SDPA ratios.

Each config also checks numerics against an fp32 reference (SDPA's math backend on fp32 copies of the
inputs, on the first sequence and up to 4 heads): the max error of our output and of our gradients next
to the error of SDPA at the benchmark's precision. The kernel passes (`numerics_ok`) when its errors are
at most twice SDPA's plus 1e-5, the rule of flash-attention's own tests.

Without CUDA it runs a tiny fp32 config through Triton's interpreter so the command is proven
end to end; those timings say nothing about GPU speed.

`--tune` first picks the kernel's block sizes per head dim from the small candidate lists of
`llm_core/model/attention/flash_config.py` (`TUNE_CANDIDATES`), at one sequence length (`--tune-seq`,
4096): the forward's by forward time, then the dK/dV and the dQ kernels' by forward+backward time,
one kernel at a time with the others at their best so far. A candidate that does not fit the GPU
(shared memory) is recorded as failed. The winners' numerics are checked like the sweep's, and the
JSON's `tuning` holds, per head dim, every candidate's time and the entries to put in `LAUNCH_CONFIGS`
(the sweep itself always measures the table the model uses).

The last line of output is a JSON object (per-config results, `ratio_fwd`, `ratio_fwd_bwd`, `numerics_ok`).
Record GPU numbers in bench/RESULTS.md with date and hardware.

    python bench/attention.py                      # full sweep on a GPU, tiny on CPU
    python bench/attention.py --seq 2048 --head-dims 128 --dtype fp16
    python bench/attention.py --head-dims 64 --tune        # block sizes for head dim 64, then the sweep
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Before the kernel module is imported: @triton.jit picks interpreter mode at decoration.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from llm_core.model.attention import attention  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TOKENS_PER_CONFIG = 16384
MODEL_WIDTH = 2048
NUMERICS_HEADS = 4  # the fp32 reference materialises heads x seq^2 scores: a slice keeps 8k affordable
NUMERICS_FLOOR = 1e-5  # below this both errors are fp32 rounding noise, where "2x SDPA's" means nothing


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, nargs="+", help="sequence lengths (default 1024 2048 4096 8192)")
    parser.add_argument("--head-dims", type=int, nargs="+", help="head dims (default 64 128)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 on CUDA, fp32 with --tiny")
    parser.add_argument("--tiny", action="store_true", help="seq 64/128, head_dim 32/64, fp32 (forced without CUDA)")
    parser.add_argument("--no-causal", dest="causal", action="store_false", help="full instead of causal attention")
    parser.add_argument("--tune", action="store_true", help="time the block-size candidates of each kernel first")
    parser.add_argument("--tune-seq", type=int, help="sequence length the tuning runs at (default 4096, tiny 64)")
    args = parser.parse_args(argv)
    args.tiny = args.tiny or not HAS_CUDA
    args.seq = args.seq or ([64, 128] if args.tiny else [1024, 2048, 4096, 8192])
    args.head_dims = args.head_dims or ([32, 64] if args.tiny else [64, 128])
    args.dtype = args.dtype or ("fp32" if args.tiny else "bf16")
    args.tune_seq = args.tune_seq or (64 if args.tiny else 4096)
    return args


def _shape(seq: int, head_dim: int, tiny: bool) -> tuple[int, int]:
    """(batch, heads) for one config."""
    if tiny:
        return 1, 2
    return max(1, TOKENS_PER_CONFIG // seq), MODEL_WIDTH // head_dim


def _flops(batch: int, heads: int, seq: int, head_dim: int, causal: bool) -> tuple[float, float]:
    # Two matmuls of 2*S*S*D each per head; causal skips half; the backward is 2.5x the forward
    # (four matmuls plus recomputing QK^T), the convention of the FlashAttention papers.
    fwd = 4.0 * batch * heads * seq * seq * head_dim * (0.5 if causal else 1.0)
    return fwd, 3.5 * fwd


def _time_ms(fn, tiny: bool) -> float:
    if not tiny:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100)
    fn()
    reps = 2
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def _sdpa_context(dtype: torch.dtype):
    """SDPA pinned to its FlashAttention backend on CUDA (what we race), PyTorch's choice elsewhere."""
    if HAS_CUDA and dtype != torch.float32:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    return contextlib.nullcontext()


def _numerics(q, k, v, do, causal: bool) -> dict:
    """Max errors of ours and of SDPA (both at q's dtype) against fp32 SDPA, forward and gradients."""
    sl = (slice(0, 1), slice(0, NUMERICS_HEADS))
    q, k, v, do = (t[sl].detach() for t in (q, k, v, do))

    def run(backend, inputs, grad_out, ctx):
        inputs = [t.clone().requires_grad_(True) for t in inputs]
        with ctx:
            out = attention(*inputs, causal=causal, backend=backend)
            grads = torch.autograd.grad(out, inputs, grad_out)
        return [out.float(), *(g.float() for g in grads)]

    if HAS_CUDA:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        ref_ctx = sdpa_kernel(SDPBackend.MATH)
    else:
        ref_ctx = contextlib.nullcontext()
    ref = run("sdpa", [t.float() for t in (q, k, v)], do.float(), ref_ctx)
    errs = {}
    for name, backend, ctx in (("ours", "triton", contextlib.nullcontext()), ("sdpa", "sdpa", _sdpa_context(q.dtype))):
        got = run(backend, (q, k, v), do, ctx)
        diffs = [(a - b).abs().max().item() for a, b in zip(got, ref)]
        errs[f"err_out_{name}"] = _sig(diffs[0])
        errs[f"err_grad_{name}"] = _sig(max(diffs[1:]))
    errs["numerics_ok"] = all(errs[f"err_{kind}_ours"] <= 2 * errs[f"err_{kind}_sdpa"] + NUMERICS_FLOOR
                              for kind in ("out", "grad"))
    return errs


def _inputs(seq: int, head_dim: int, dtype: torch.dtype, tiny: bool):
    batch, heads = _shape(seq, head_dim, tiny)
    device = "cuda" if HAS_CUDA else "cpu"
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, do = (
        torch.randn(batch, heads, seq, head_dim, device=device, dtype=dtype, generator=gen) for _ in range(4)
    )
    for x in (q, k, v):
        x.requires_grad_(True)
    return batch, heads, q, k, v, do


def _tune(head_dim: int, seq: int, dtype: torch.dtype, causal: bool, tiny: bool) -> dict:
    """Greedy per-kernel choice among the candidates: fwd by forward time, then dkdv and dq by fwd+bwd time."""
    from llm_core.model.attention import flash_config as fc

    _, _, q, k, v, do = _inputs(seq, head_dim, dtype, tiny)
    candidates = fc.TUNE_CANDIDATES_INTERPRETER if tiny else fc.TUNE_CANDIDATES[head_dim]
    default = fc.launch_config(head_dim, q.element_size(), on_gpu=HAS_CUDA)

    def fwd():
        attention(q, k, v, causal=causal, backend="triton")

    def fwd_bwd():
        torch.autograd.grad(attention(q, k, v, causal=causal, backend="triton"), (q, k, v), do)

    chosen, kernels = {}, {}
    for kernel in fc.KERNELS:
        rows = []
        for cfg in candidates[kernel]:
            with fc.launch_override({**chosen, kernel: cfg}):
                try:
                    rows.append({**cfg, "ms": _sig(_time_ms(fwd if kernel == "fwd" else fwd_bwd, tiny))})
                except Exception as e:  # noqa: BLE001 - out of shared memory, a compile error: this candidate only
                    rows.append({**cfg, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"})
            print(f"  tune hd{head_dim} {kernel:<4} {cfg} -> {rows[-1].get('ms', rows[-1].get('error'))}", flush=True)
        ok = [r for r in rows if "ms" in r]
        if not ok:
            raise RuntimeError(f"no {kernel} candidate ran for head dim {head_dim}: {rows}")
        best = min(ok, key=lambda r: r["ms"])
        chosen[kernel] = {key: best[key] for key in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")}
        base = next((r for r in ok if all(r[key] == default[kernel][key] for key in chosen[kernel])), None)
        kernels[kernel] = {"table": default[kernel], "best": chosen[kernel], "candidates": rows,
                           "speedup_vs_table": _sig(base["ms"] / best["ms"]) if base else None,
                           "timed_as": "fwd" if kernel == "fwd" else "fwd+bwd"}
    with fc.launch_override(chosen):
        numerics = _numerics(q, k, v, do, causal)
    return {"head_dim": head_dim, "seq": seq, "kernels": kernels, "launch_configs": chosen, **numerics}


def _run_config(seq: int, head_dim: int, dtype: torch.dtype, causal: bool, tiny: bool) -> dict:
    batch, heads, q, k, v, do = _inputs(seq, head_dim, dtype, tiny)

    def fwd(backend):
        return lambda: attention(q, k, v, causal=causal, backend=backend)

    def fwd_bwd(backend):
        def step():
            out = attention(q, k, v, causal=causal, backend=backend)
            # Gradients w.r.t. the inputs only, so nothing accumulates into .grad between reps.
            torch.autograd.grad(out, (q, k, v), do)

        return step

    def timed(make, backend):
        with _sdpa_context(dtype) if backend == "sdpa" else contextlib.nullcontext():
            return _time_ms(make(backend), tiny)

    numerics = _numerics(q, k, v, do, causal)
    flops_fwd, flops_fwd_bwd = _flops(batch, heads, seq, head_dim, causal)
    ms = {
        "ours_fwd": timed(fwd, "triton"),
        "sdpa_fwd": timed(fwd, "sdpa"),
        "ours_fwd_bwd": timed(fwd_bwd, "triton"),
        "sdpa_fwd_bwd": timed(fwd_bwd, "sdpa"),
    }
    tflops = {name: (flops_fwd if name.endswith("_fwd") else flops_fwd_bwd) / t / 1e9 for name, t in ms.items()}
    return {
        "seq": seq,
        "head_dim": head_dim,
        "batch": batch,
        "heads": heads,
        **{f"{name}_ms": _sig(t) for name, t in ms.items()},
        **{f"{name}_tflops": _sig(t) for name, t in tflops.items()},
        "ratio_fwd": _sig(tflops["ours_fwd"] / tflops["sdpa_fwd"]),
        "ratio_fwd_bwd": _sig(tflops["ours_fwd_bwd"] / tflops["sdpa_fwd_bwd"]),
        **numerics,
    }


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    dtype = DTYPES[args.dtype]
    device_name = torch.cuda.get_device_name() if HAS_CUDA else f"cpu ({platform.processor() or platform.machine()})"
    mode = "triton interpreter, timings not meaningful" if not HAS_CUDA else "cuda"
    print(f"attention benchmark on {device_name} [{mode}], dtype={args.dtype}, causal={args.causal}")
    tuning = {}
    if args.tune:
        for head_dim in args.head_dims:
            tuning[str(head_dim)] = t = _tune(head_dim, args.tune_seq, dtype, args.causal, args.tiny)
            print(f"tuned hd{head_dim} at seq {args.tune_seq}: {json.dumps(t['launch_configs'])} "
                  f"(numerics {'ok' if t['numerics_ok'] else 'NOT ok'})", flush=True)
    header = (f"{'seq':>6} {'hdim':>5} {'batch':>5} {'heads':>5} | {'ours fwd':>9} {'sdpa fwd':>9} {'ratio':>6} | "
              f"{'ours f+b':>9} {'sdpa f+b':>9} {'ratio':>6} | {'err ours':>8} {'err sdpa':>8} {'ok':>3}")
    print(header + "\n" + "-" * len(header))
    results = []
    for head_dim in args.head_dims:
        for seq in args.seq:
            r = _run_config(seq, head_dim, dtype, args.causal, args.tiny)
            results.append(r)
            err_ours = max(r["err_out_ours"], r["err_grad_ours"])
            err_sdpa = max(r["err_out_sdpa"], r["err_grad_sdpa"])
            print(f"{seq:>6} {head_dim:>5} {r['batch']:>5} {r['heads']:>5} | "
                  f"{r['ours_fwd_tflops']:>9.3g} {r['sdpa_fwd_tflops']:>9.3g} {r['ratio_fwd']:>6.2f} | "
                  f"{r['ours_fwd_bwd_tflops']:>9.3g} {r['sdpa_fwd_bwd_tflops']:>9.3g} {r['ratio_fwd_bwd']:>6.2f} | "
                  f"{err_ours:>8.1e} {err_sdpa:>8.1e} {'yes' if r['numerics_ok'] else 'NO':>3}", flush=True)
    print("(TFLOP/s; ratio = ours / sdpa; err = max |error| of output and gradients vs fp32 SDPA)")
    summary = {
        "benchmark": "attention",
        "device": device_name,
        "interpreter": not HAS_CUDA,
        "dtype": args.dtype,
        "causal": args.causal,
        "torch": torch.__version__,
        "numerics_ok": all(r["numerics_ok"] for r in results),
        "results": results,
    }
    if tuning:
        summary["tuning"] = tuning
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
