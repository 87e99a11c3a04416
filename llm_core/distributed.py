"""Process-group set-up, rank helpers and model wrapping for the parallel modes.

Workers are started by torch.distributed's own launcher (torchrun / elastic), which sets RANK, WORLD_SIZE and
LOCAL_RANK; without them the run is a single process and every helper here degrades to a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(backend: str = "auto") -> Context:
    """Join the process group torchrun prepared (if any) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return Context(rank=rank, world=world, local_rank=local_rank, device=device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def wrap(model: torch.nn.Module, mode: str, ctx: Context) -> torch.nn.Module:
    """The module the training step calls. `none` returns the model itself."""
    if mode == "none" or not ctx.distributed:
        return model
    if mode in ("ddp", "zero1"):
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"parallel.mode must be one of none, ddp, zero1, fsdp (got {mode!r})")


def resolve_nproc(nproc: int | str) -> int:
    if nproc != "auto":
        return int(nproc)
    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def launch_command(parallel, module: str, argv: list[str]) -> list[str] | None:
    """The torchrun command that runs `python -m module argv` on every worker, or None to run in this process."""
    import sys

    if parallel.mode == "none" or "WORLD_SIZE" in os.environ:
        return None
    nproc = resolve_nproc(parallel.nproc)
    if nproc == 1 and parallel.nnodes == 1:
        return None
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--nnodes={parallel.nnodes}"]
    if parallel.nnodes == 1:
        cmd.append("--standalone")  # a private rendezvous on a free local port
    else:
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={parallel.rdzv_endpoint}", f"--rdzv-id={parallel.rdzv_id}",
                f"--node-rank={parallel.node_rank}"]
    return cmd + ["-m", module, *argv]


def relaunch_if_needed(parallel, module: str) -> None:
    """Called first thing by a training stage: re-runs the stage under torchrun when params ask for workers."""
    import subprocess
    import sys

    cmd = launch_command(parallel, module, sys.argv[1:])
    if cmd is None:
        return
    print("launching:", " ".join(cmd), flush=True)
    sys.exit(subprocess.run(cmd).returncode)
