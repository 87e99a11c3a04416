"""Compile the Triton flash-attention kernels for a GPU target without a GPU: shared memory, registers and spills of
every launch configuration (the table in `llm_core/model/attention/flash_config.py` and its tuning candidates).

Triton compiles to PTX and `ptxas` (bundled with triton) assembles it for the target, so a CPU-only machine sees what
a GPU would run: the shared memory a program needs (a config fails to launch where it exceeds the part's limit:
227 KB per program on sm_90, 163 KB on sm_80, 99 KB on sm_86/sm_89) and the registers and spill bytes `ptxas -v`
reports (spills go to local memory, slow). The kernels are specialised as a real call specialises them: bf16,
causal, contiguous tensors (last stride 1), pointers, strides and lengths divisible by 16.

    python bench/flash_compile.py                          # the table's configs, sm_90
    python bench/flash_compile.py --candidates --arch 80   # every tuning candidate, for an A100

Not a speed benchmark: it prints a table and a JSON object as its last line (`configs`: one row per kernel and
config). Each compilation takes a few seconds of CPU.
"""

from __future__ import annotations

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))
os.environ.pop("TRITON_INTERPRET", None)  # compile for real, whatever the caller's environment says
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's current default, stated to silence its warning

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from llm_core.model.attention import flash  # noqa: E402
from llm_core.model.attention.flash_config import LAUNCH_CONFIGS, TUNE_CANDIDATES  # noqa: E402

KERNELS = {"fwd": flash._attn_fwd, "dkdv": flash._attn_bwd_dkdv, "dq": flash._attn_bwd_dq}
SMEM_LIMIT_KB = {80: 163, 86: 99, 89: 99, 90: 227, 100: 227}
POINTERS = {"Q", "K", "V", "O", "DO", "DK", "DV", "DQ"}
FP32_POINTERS = {"LSE", "DELTA"}


def compile_kernel(kernel: str, head_dim: int, cfg: dict, arch: int) -> dict:
    fn = KERNELS[kernel]
    signature, attrs, constants = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in POINTERS or name in FP32_POINTERS:
            signature[name] = "*bf16" if name in POINTERS else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name == "scale":
            signature[name] = "fp32"
        elif name.startswith("stride") and name.endswith("d"):  # the head dim is contiguous: Triton specialises 1
            signature[name], constants[name] = "constexpr", 1
        elif name.startswith("stride") or name in ("seq_q", "seq_k"):
            signature[name] = "i32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("num_heads", "num_kv_heads"):
            signature[name] = "i32"
        else:
            signature[name] = "constexpr"
    constants.update(GROUP=1, HEAD_DIM=head_dim, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], CAUSAL=True,
                     DOT_PRECISION="tf32", IO_DTYPE=tl.bfloat16, DOT_DTYPE=tl.bfloat16)
    compiled = triton.compile(ASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]})
    row = {"kernel": kernel, "head_dim": head_dim, **cfg, "shared_kb": round(compiled.metadata.shared / 1024, 1)}
    row.update(_ptxas_report(compiled.asm["ptx"], arch))
    limit = SMEM_LIMIT_KB.get(arch)
    row["fits"] = None if limit is None else row["shared_kb"] <= limit
    return row


def _ptxas_report(ptx: str, arch: int) -> dict:
    """Registers and spill bytes from `ptxas -v`, the assembler Triton itself runs."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        suffix = "a" if arch >= 90 else ""
        proc = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}{suffix}", src,
                               "-o", os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    regs = re.search(r"Used (\d+) registers", log)
    stores = re.search(r"(\d+) bytes spill stores", log)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_bytes": int(stores.group(1)) if stores else None}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90 = H100/H200, 80 = A100)")
    ap.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--candidates", action="store_true", help="every tuning candidate, not only the table's")
    args = ap.parse_args(argv)
    print(f"flash kernels compiled for sm_{args.arch} (bf16, causal), triton {triton.__version__}; shared memory "
          f"limit per program {SMEM_LIMIT_KB.get(args.arch, '?')} KB")
    print(f"{'kernel':<6} {'hd':>4} {'BM':>4} {'BN':>4} {'warps':>5} {'stages':>6} | {'smem KB':>8} {'regs':>5} "
          f"{'spill B':>8} {'fits':>5}")
    rows = []
    for head_dim in args.head_dims:
        for kernel in KERNELS:
            configs = (TUNE_CANDIDATES[head_dim][kernel] if args.candidates
                       else [LAUNCH_CONFIGS[(head_dim, 2)][kernel]])
            for cfg in configs:
                r = compile_kernel(kernel, head_dim, cfg, args.arch)
                r["default"] = cfg == LAUNCH_CONFIGS[(head_dim, 2)][kernel]
                rows.append(r)
                print(f"{kernel:<6} {head_dim:>4} {cfg['BLOCK_M']:>4} {cfg['BLOCK_N']:>4} {cfg['num_warps']:>5} "
                      f"{cfg['num_stages']:>6} | {r['shared_kb']:>8.1f} {r['registers'] or '?':>5} "
                      f"{r['spill_bytes'] if r['spill_bytes'] is not None else '?':>8} "
                      f"{'yes' if r['fits'] else 'NO':>5}{'  (table)' if r['default'] and args.candidates else ''}",
                      flush=True)
    summary = {"benchmark": "flash_compile", "arch": args.arch, "triton": triton.__version__, "configs": rows}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
