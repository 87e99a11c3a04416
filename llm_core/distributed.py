"""Process-group set-up, rank helpers, model wrapping for the parallel modes, and full-state gathering.

Workers are started by torch.distributed's own launcher (torchrun / elastic), which sets RANK, WORLD_SIZE and
LOCAL_RANK; without them the run is a single process and every helper here degrades to a no-op.

The modes are wrapping choices around one model and one loop:
    ddp    DistributedDataParallel: every rank holds everything, gradients are all-reduced
    zero1  DDP gradients + ZeroRedundancyOptimizer: each rank keeps the optimizer state of (and updates) only its
           share of the parameters, then broadcasts them; works for AdamW and Muon (Muon is per-matrix)
    fsdp   FSDP2 `fully_shard` per block + root: parameters, gradients and optimizer state are sharded; under bf16
           autocast parameters are gathered in bf16 and gradients reduced in fp32 (`fsdp_mixed_precision`)
Checkpoints always hold the full, unsharded state in one format (weights by name, optimizer state keyed by
parameter name), so a checkpoint written in any mode loads in any other and in a single process.
"""

from __future__ import annotations

import os
import subprocess
import sys
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


def broadcast_object(obj, ctx: Context):
    """Rank 0's value of a small picklable object on every rank (decisions that must agree, e.g. what to resume)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def fsdp_mixed_precision(amp_dtype: torch.dtype | None):
    """FSDP2's precision for an autocast dtype: parameters gathered and used in it (half the all-gather bytes of fp32,
    and the matmuls run in it under autocast anyway), gradients reduce-scattered in fp32 (sums over many ranks lose
    bits in bf16); the sharded master weights and the optimizer stay fp32. None for fp32 runs."""
    if amp_dtype is None:
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32)


def gather_objects(obj, ctx: Context) -> list:
    """Every rank's value of a picklable object, in rank order (per-item evaluation records)."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def wrap(model: torch.nn.Module, mode: str, ctx: Context, amp_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The module the training step calls. `none` (or one process) returns the model itself; FSDP shards in place,
    with `fsdp_mixed_precision(amp_dtype)`."""
    if mode == "none" or not ctx.distributed:
        return model
    if mode in ("ddp", "zero1"):
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        policy = fsdp_mixed_precision(amp_dtype)
        kw = {"mp_policy": policy} if policy is not None else {}
        # one all-gather per block keeps the peak memory at one unsharded block; the root holds embeddings + head
        for block in model.layers:
            fully_shard(block, **kw)
        fully_shard(model, **kw)
        return model
    raise ValueError(f"parallel.mode must be one of none, ddp, zero1, fsdp (got {mode!r})")


def shards_optimizer(mode: str, ctx: Context) -> bool:
    return mode == "zero1" and ctx.distributed


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """The global gradient norm (clipped to max_norm; inf = measure only), as a plain local tensor on every rank."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):  # FSDP: a DTensor reduced over the shards
        norm = norm.full_tensor()
    return norm


# --------------------------------------------------------------------------------------------------------------------
# Full state for checkpoints


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # gathered onto rank 0's CPU: the checkpoint of a sharded run is the same file a single process writes
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state(model: torch.nn.Module, ctx: Context) -> dict[str, torch.Tensor]:
    """Full weights by name on rank 0 (other ranks may get {}); a collective under FSDP: call on every rank."""
    if not ctx.distributed:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


def _param_names(model: torch.nn.Module, opt) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}  # a tied weight goes by its first name, as in DCP
    return [names[id(p)] for g in opt.param_groups for p in g["params"]]


def _int_to_names(sd: dict, names: list[str]) -> dict:
    """torch's positional optimizer state -> keyed by parameter name (the checkpoint format)."""
    groups, i = [], 0
    for g in sd["param_groups"]:
        groups.append({**g, "params": names[i:i + len(g["params"])]})
        i += len(g["params"])
    return {"state": {names[k]: v for k, v in sd["state"].items()}, "param_groups": groups}


def _names_to_int(sd: dict, names: list[str]) -> dict:
    index = {n: i for i, n in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in sd["param_groups"]]
    return {"state": {index[n]: v for n, v in sd["state"].items()}, "param_groups": groups}


def optimizer_states(model: torch.nn.Module, optimizers: list, ctx: Context) -> list[dict]:
    """Every optimizer's full state keyed by parameter name, on rank 0; a collective: call on every rank."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    out = []
    for opt in optimizers:
        if isinstance(opt, ZeroRedundancyOptimizer):
            opt.consolidate_state_dict(to=0)
            out.append(_int_to_names(opt.state_dict(), _param_names(model, opt)) if ctx.is_main else {})
        elif not ctx.distributed:
            out.append(_int_to_names(opt.state_dict(), _param_names(model, opt)))
        else:
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            out.append(get_optimizer_state_dict(model, opt, options=_full_options()))
    return out


def load_optimizer_states(model: torch.nn.Module, optimizers: list, states: list[dict], ctx: Context) -> None:
    """Restore name-keyed full states (every rank passes the whole state; each keeps what it owns)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    for opt, sd in zip(optimizers, states):
        names = _param_names(model, opt)
        if isinstance(opt, ZeroRedundancyOptimizer) or not ctx.distributed:
            opt.load_state_dict(_names_to_int(sd, names))
        else:
            from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

            set_optimizer_state_dict(model, opt, sd, options=_full_options())


# --------------------------------------------------------------------------------------------------------------------
# Launch


def resolve_nproc(nproc: int | str) -> int:
    if nproc != "auto":
        return int(nproc)
    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def resolve_node_rank(node_rank: int | str) -> int:
    """`auto` takes the scheduler's node index (SLURM_NODEID, else NODE_RANK), so one params.yaml serves every node."""
    if node_rank != "auto":
        return int(node_rank)
    for var in ("SLURM_NODEID", "NODE_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    raise ValueError("params.yaml: parallel.node_rank=auto needs SLURM_NODEID or NODE_RANK in the environment; "
                     "set parallel.node_rank to this machine's index instead")


def world_size(parallel) -> int:
    """Ranks the params ask for (1 when mode is none: the stage runs in-process)."""
    if parallel.mode == "none":
        return 1
    return resolve_nproc(parallel.nproc) * parallel.nnodes


def launch_command(parallel, module: str, argv: list[str]) -> list[str] | None:
    """The torchrun command that runs `python -m module argv` on every worker, or None to run in this process."""
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
                f"--node-rank={resolve_node_rank(parallel.node_rank)}"]
    return cmd + ["-m", module, *argv]


def relaunch_if_needed(parallel, module: str) -> None:
    """Called first thing by a training stage: re-runs the stage under torchrun when params ask for workers."""
    cmd = launch_command(parallel, module, sys.argv[1:])
    if cmd is None:
        return
    print("launching:", " ".join(cmd), flush=True)
    env = dict(os.environ)
    if not torch.cuda.is_available():
        # CPU ranks share the cores: torchrun would pin each to 1 thread only when OMP_NUM_THREADS is unset
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // resolve_nproc(parallel.nproc))))
    sys.exit(subprocess.run(cmd, env=env).returncode)


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or the only process (usable before `setup`)."""
    return int(os.environ.get("RANK", "0")) == 0
