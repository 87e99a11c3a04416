"""Parallel modes vs one process: ddp, zero1 and fsdp on 2 CPU ranks (gloo) follow the single-process run.

Both see the same global batch per step (2 ranks x 4 rows = 1 process x 8 rows; the loader hands rank r the r-th
slice of each global batch), so losses and weights must agree to float32 round-off after 10 steps. Muon runs its
Newton-Schulz iterations in bfloat16 (torch.optim.Muon), which magnifies the round-off of the gradient all-reduce to
~1e-4 in the weights: ZeRO-1 Muon is held to 1e-5 against DDP Muon (same all-reduced gradients: sharding the
optimizer adds nothing), and Muon runs to bf16 tolerance against the single process.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml

from llm_core import distributed
from llm_core.config import ParallelConfig
from llm_core.training.loop import train
from tests.dvc_run import copy_repo
from tests.helpers import set_params, tiny_params
from tests.integration import dist_worker as W

ROOT = Path(__file__).resolve().parents[2]
RUNS = ["ddp:adamw", "zero1:adamw", "fsdp:adamw", "ddp:muon", "zero1:muon", "fsdp:muon"]
TOL = 1e-5
BF16_TOL = 2e-3


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(live: Path) -> list[float]:
    rows = csv.DictReader(open(live / "plots/metrics/train/loss.tsv"), delimiter="\t")
    return [float(r["loss"]) for r in rows]


def assert_same_run(out: Path, name: str, ref: Path, tol: float = TOL) -> None:
    a, b = losses(out / f"{name}_live"), losses(ref.with_name(ref.name + "_live"))
    assert len(a) == len(b) == W.STEPS
    assert max(abs(x - y) for x, y in zip(a, b)) < tol, (name, a, b)
    wa = safetensors.torch.load_file(str(out / name / "model.safetensors"))
    wb = safetensors.torch.load_file(str(ref / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=tol, rtol=0, msg=f"{name}: {k}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The single-process runs (batch 8 = 2 ranks x 4), one per optimizer."""
    out = tmp_path_factory.mktemp("single")
    for optimizer in ("adamw", "muon"):
        train(W.model_config(), W.train_config(optimizer, 8), ParallelConfig(), W.job(out, f"none-{optimizer}"))
    return out


MODES = ("ddp", "zero1", "fsdp")
GLOBAL_RUNS = [f"{m}:adamw:global" for m in MODES]
MOE_RUNS = [f"{m}:adamw:moe" for m in MODES]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> Path:
    """Every two-rank run of the tests below in one torchrun launch (each launch starts three interpreters)."""
    out = tmp_path_factory.mktemp("ranks")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "tests.integration.dist_worker", str(out), "4", *RUNS, *GLOBAL_RUNS, *MOE_RUNS]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_ddp_zero1_fsdp_match_one_process(reference, ranks):
    for run in RUNS:
        mode, optimizer = run.split(":")
        tol = TOL if optimizer == "adamw" else BF16_TOL
        assert_same_run(ranks, f"{mode}-{optimizer}", reference / f"none-{optimizer}", tol)
    # same gradients as DDP (one all-reduce): the sharded Muon step must be exactly the replicated one
    assert_same_run(ranks, "zero1-muon", ranks / "ddp-muon", TOL)
    # the sharded runs checkpoint the full state in the single-process format
    ckpt = ranks / "fsdp-adamw/checkpoints/step_0000010"
    blob = torch.load(ckpt / "train_state.pt", weights_only=True)
    assert "tok_emb.weight" in blob["optimizers"][0]["state"]


@pytest.mark.slow
def test_validation_is_global_whatever_the_process_count(ranks, tmp_path):
    """The same global batch (128 tokens: 1 process x 2 micro-batches of 4 rows, or 2 ranks x 4 rows) and the same
    11 validation rows (`global_eval_tokens`, split across the ranks: the last global batch leaves rank 1 nothing,
    so it scores a row with no target while rank 0 scores three) give the single process's val_loss and val_bpb in
    every parallel mode. Validation counted per rank, two ranks scored twice the rows of one process."""
    single = train(W.model_config(), W.train_config("adamw", 4, **W.GLOBAL), ParallelConfig(),
                   W.job(tmp_path, "single-global"))
    for mode in MODES:
        got = json.loads((ranks / W.run_name(mode, "adamw", global_=True) / "train_info.json").read_text())
        for key in ("val_loss", "val_bpb"):
            assert got[key] == pytest.approx(single[key], abs=1e-6), (mode, key, got[key], single[key])


@pytest.mark.slow
def test_ddp_with_mixture_of_experts_matches_one_process(ranks, tmp_path):
    """Expert token counts are summed over ranks before the bias step, so both ranks take the single process's
    balancing step; with latent attention, recomputation and the sequence balance loss on, ddp, zero1 and fsdp
    (experts sharded along the expert dimension) still follow the single process."""
    train(W.model_config(moe=True), W.train_config("adamw", 8, activation_checkpointing="full"), ParallelConfig(),
          W.job(tmp_path / "single", "none-adamw-moe"))
    for mode in MODES:  # expert_bias included in the weights compared
        assert_same_run(ranks, f"{mode}-adamw-moe", tmp_path / "single" / "none-adamw-moe")

    def load_curve(live: Path) -> list[str]:
        rows = csv.DictReader(open(live / "plots/metrics/moe/load_max_mean.tsv"), delimiter="\t")
        return [r["load_max_mean"] for r in rows]

    # the same global counts on every step: the ranks' counts were summed, not taken from one rank
    assert load_curve(ranks / "ddp-adamw-moe_live") == load_curve(tmp_path / "single" / "none-adamw-moe_live")


@pytest.mark.slow
def test_two_nodes_with_c10d_rendezvous_match_one_process(reference, tmp_path):
    port = free_port()
    agents = []
    for node_rank in (0, 1):
        parallel = ParallelConfig(mode="ddp", nproc=1, nnodes=2, node_rank=node_rank,
                                  rdzv_endpoint=f"127.0.0.1:{port}", rdzv_id=f"test-{port}")
        cmd = distributed.launch_command(parallel, "tests.integration.dist_worker", [str(tmp_path), "4", "ddp:adamw"])
        assert "--rdzv-backend=c10d" in cmd and f"--node-rank={node_rank}" in cmd
        agents.append(subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True))
    for agent in agents:
        out, _ = agent.communicate(timeout=300)
        assert agent.returncode == 0, out[-3000:]
    assert_same_run(tmp_path, "ddp-adamw", reference / "none-adamw")


TINY = tiny_params(pretrain={"steps": 4, "eval_every": 2, "global_eval_tokens": 10**6, "checkpoint_every": 2,
                             "warmup_steps": 1, "global_batch_tokens": 512},
                   parallel={"mode": "fsdp", "nproc": 2})


@pytest.mark.slow
def test_dvc_repro_pretrain_with_fsdp_on_two_cpu_processes(tokenized, tmp_path):
    # global_eval_tokens past the validation rows: every validation pass ends on a partial global batch
    repo = copy_repo(tokenized, tmp_path / "repo")  # data, tokenizer and shards made: pretrain alone runs
    set_params(repo, TINY)
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "pretrain"], cwd=repo, env=env(),
                          capture_output=True, text=True, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert re.findall(r"Running stage '([^']+)'", out) == ["pretrain"]
    assert "torch.distributed.run --nproc-per-node=2" in out
    info = yaml.safe_load((repo / "models/pretrain/train_info.json").read_text())
    assert info["steps"] == 4 and info["tokens"] == 4 * 512  # 2 ranks x 4 x 32 tokens, derived grad_accum 2
    metrics = yaml.safe_load((repo / "metrics/pretrain.json").read_text())
    assert "val_loss" in metrics and "steps" not in metrics  # counters stay out of the compared metrics
    assert (repo / "models/pretrain/model.safetensors").exists()
