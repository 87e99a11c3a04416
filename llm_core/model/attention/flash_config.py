"""Launch configurations of the Triton flash-attention kernel (`flash.py`): block sizes, warps and pipeline stages per
kernel, per head dim and element size, plus the small candidate lists a GPU run tunes them from.

The kernel reads its configuration from `LAUNCH_CONFIGS`, fixed in code rather than autotuned at run time: a block
size changes the order in which a row's terms are summed, so tuning during a run would make the weights depend on
timing noise, and seq_k grows at every decode step (re-tuning per length costs more than it saves).
`python bench/attention.py --tune` times every candidate of `TUNE_CANDIDATES` on the GPU, one kernel at a time
through `launch_override`, checks the winner's numerics and prints the table entries to put here.

Shared memory (from `python bench/flash_compile.py`, which compiles for a GPU target without one): see that script
and docs/benchmarks.md for the figures per configuration. Parts differ in what one program may use: 227 KB on
H100/H200 (sm_90), 163 KB on A100 (sm_80), 99 KB on L40S/RTX 4090 and other sm_86/sm_89 parts; a configuration that
does not fit fails to launch (`OutOfResources`), and `bench/attention.py --tune` records it as such.
"""

from __future__ import annotations

import contextlib
import os

KERNELS = ("fwd", "dkdv", "dq")


def _cfg(block_m: int, block_n: int, warps: int, stages: int) -> dict[str, int]:
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": warps, "num_stages": stages}


# (head dim, bytes per element) -> kernel -> config; "BLOCK_N" of dkdv is the keys a program owns, its "BLOCK_M" the
# queries it walks per iteration; fwd and dq own BLOCK_M queries and walk BLOCK_N keys. Chosen from sm_90 compiles
# (ptxas -v) before any GPU run: the 16-bit forward and the head_dim <= 64 backward do not spill; the head_dim 128
# backward spills ~100 bytes, less than any other tile shape tried that keeps 64 keys per program.
LAUNCH_CONFIGS: dict[tuple[int, int], dict[str, dict[str, int]]] = {
    (32, 2): {"fwd": _cfg(128, 64, 4, 4), "dkdv": _cfg(32, 64, 4, 3), "dq": _cfg(64, 64, 4, 3)},
    (64, 2): {"fwd": _cfg(128, 64, 4, 4), "dkdv": _cfg(32, 64, 4, 3), "dq": _cfg(64, 64, 4, 3)},
    (128, 2): {"fwd": _cfg(128, 64, 8, 3), "dkdv": _cfg(32, 64, 8, 2), "dq": _cfg(64, 32, 8, 2)},
}
# fp32 is the accuracy path (IEEE dots, twice the bytes per tile): small tiles for every head dim
FP32_CONFIG = {"fwd": _cfg(64, 32, 4, 2), "dkdv": _cfg(32, 32, 4, 2), "dq": _cfg(32, 32, 4, 2)}
FP32_WIDE_WARPS = 8  # head dim > 64
# under TRITON_INTERPRET=1 every program is simulated in numpy: small blocks keep CPU tests fast
INTERPRETER_CONFIG = {kernel: _cfg(16, 16, 1, 1) for kernel in KERNELS}
PREPROCESS_BLOCK_M = {"gpu": 64, "interpreter": 16}

# What `bench/attention.py --tune` tries for 16-bit inputs, the default first. Triton's own tutorial
# (06-fused-attention) uses 128 keys per dK/dV program and 128 queries per dQ program; ours start at 64.
TUNE_CANDIDATES: dict[int, dict[str, list[dict[str, int]]]] = {
    64: {
        "fwd": [_cfg(128, 64, 4, 4), _cfg(128, 128, 8, 3), _cfg(64, 64, 4, 4)],
        "dkdv": [_cfg(32, 64, 4, 3), _cfg(32, 128, 4, 3), _cfg(64, 128, 8, 2)],
        "dq": [_cfg(64, 64, 4, 3), _cfg(128, 32, 4, 3), _cfg(128, 64, 8, 2)],
    },
    128: {
        "fwd": [_cfg(128, 64, 8, 3), _cfg(128, 64, 8, 2), _cfg(64, 64, 4, 3)],
        "dkdv": [_cfg(32, 64, 8, 2), _cfg(32, 128, 8, 2), _cfg(64, 64, 8, 2)],
        "dq": [_cfg(64, 32, 8, 2), _cfg(128, 32, 8, 2), _cfg(64, 64, 8, 2)],
    },
}
# the interpreter's list: proves the tuner end to end on a CPU (its timings mean nothing)
TUNE_CANDIDATES_INTERPRETER = {kernel: [_cfg(16, 16, 1, 1), _cfg(32, 16, 1, 1)] for kernel in KERNELS}

_override: dict[str, dict[str, int]] = {}


@contextlib.contextmanager
def launch_override(configs: dict[str, dict[str, int]]):
    """Launch the named kernels (`fwd`, `dkdv`, `dq`) with these configs inside the block, whatever the table says
    (the tuner, and tests of the table's alternatives)."""
    unknown = set(configs) - set(KERNELS)
    if unknown:
        raise ValueError(f"launch_override: unknown kernels {sorted(unknown)}; use {', '.join(KERNELS)}")
    global _override
    previous, _override = _override, {**_override, **configs}
    try:
        yield
    finally:
        _override = previous


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def launch_config(head_dim: int, element_size: int, on_gpu: bool) -> dict[str, dict[str, int]]:
    """Block sizes and pipelining of every kernel for one call (`pre` is the backward's preprocess)."""
    if not on_gpu or interpreting():
        cfg = dict(INTERPRETER_CONFIG)
        pre = PREPROCESS_BLOCK_M["interpreter"]
    elif element_size == 4:
        warps = FP32_WIDE_WARPS if head_dim > 64 else 4
        cfg = {kernel: {**c, "num_warps": warps} for kernel, c in FP32_CONFIG.items()}
        pre = PREPROCESS_BLOCK_M["gpu"]
    else:
        cfg = dict(LAUNCH_CONFIGS[(head_dim, 2)])
        pre = PREPROCESS_BLOCK_M["gpu"]
    cfg.update(_override)
    return {**cfg, "pre": {"BLOCK_M": pre}}
