"""Batched Muon (llm_core.training.muon) against torch.optim.Muon, the per-matrix reference: the same parameters
to bf16 round-off in one process and under ZeRO-1, state that moves between the two, and a step of a few dozen
kernels where torch's takes thousands."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from llm_core.config import ModelConfig
from llm_core.model.transformer import Transformer
from llm_core.training import optim
from llm_core.training.muon import Muon, adjusted_lr
from tests.helpers import ROOT, muon_params, muon_steps

STEPS = 4
LR = 0.02


def assert_bf16_close(ours, ref, adjust_lr_fn, steps=STEPS):
    """Each step adds lr' x (an orthogonalised bf16 matrix, entries below ~1): bf16 round-off (2^-8 relative) of
    those entries, a few ulps through 5 iterations, bounds the difference, far below one whole update."""
    for a, b in zip(ours, ref):
        tol = steps * adjusted_lr(LR, adjust_lr_fn, a.shape) * 2**-6
        torch.testing.assert_close(a.detach(), b.detach(), atol=tol, rtol=0)


@pytest.mark.parametrize("adjust_lr_fn,nesterov", [(None, True), ("match_rms_adamw", True), ("original", False)])
def test_equals_torch_muon_within_bf16_round_off(adjust_lr_fn, nesterov):
    kw = dict(lr=LR, weight_decay=0.1, momentum=0.95, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    ref_params, our_params = muon_params(), muon_params()
    ref, ours = torch.optim.Muon(ref_params, **kw), Muon(our_params, ns_dtype=torch.bfloat16, **kw)
    muon_steps(ref, ref_params)
    muon_steps(ours, our_params)
    moved = max((a - b).abs().max().item() for a, b in zip(our_params, muon_params()))
    assert moved > 10 * LR * 2**-6  # the steps did move the weights, well past the tolerance
    assert_bf16_close(our_params, ref_params, adjust_lr_fn)
    for a, b in zip(our_params, ref_params):  # the fp32 momentum is the same arithmetic
        torch.testing.assert_close(ours.state[a]["momentum_buffer"], ref.state[b]["momentum_buffer"])


def test_state_moves_between_torch_muon_and_ours():
    kw = dict(lr=LR, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    ref_params = muon_params()
    ref = torch.optim.Muon(ref_params, **kw)
    muon_steps(ref, ref_params, steps=2)
    our_params = [torch.nn.Parameter(p.detach().clone()) for p in ref_params]
    ours = Muon(our_params, ns_dtype=torch.bfloat16, **kw)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))  # a checkpoint written with torch.optim.Muon
    muon_steps(ref, ref_params, steps=2, first=2)
    muon_steps(ours, our_params, steps=2, first=2)
    assert_bf16_close(our_params, ref_params, "match_rms_adamw", steps=2)
    assert ours.state_dict()["param_groups"][0].keys() == ref.state_dict()["param_groups"][0].keys()


def test_on_the_cpu_the_iterations_run_in_fp32_close_to_torch_muon():
    """The CPU default: fp32 Newton-Schulz (bf16 matmuls are slow on CPUs without bf16 units). It is what
    ns_dtype=float32 gives, differs from the bf16 run, and stays within bf16 round-off of torch.optim.Muon."""
    kw = dict(lr=LR, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    runs = {}
    for name, dtype in (("default", None), ("fp32", torch.float32), ("bf16", torch.bfloat16)):
        params = muon_params()
        muon_steps(Muon(params, ns_dtype=dtype, **kw), params)
        runs[name] = params
    ref_params = muon_params()
    muon_steps(torch.optim.Muon(ref_params, **kw), ref_params)
    assert all(torch.equal(a, b) for a, b in zip(runs["default"], runs["fp32"]))
    assert not all(torch.equal(a, b) for a, b in zip(runs["default"], runs["bf16"]))
    assert_bf16_close(runs["default"], ref_params, "match_rms_adamw")


_ZERO1_WORKER = """
import os, sys, torch, torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
sys.path.insert(0, {root!r})
from llm_core.training.muon import Muon
from tests.helpers import muon_params, muon_steps
dist.init_process_group("gloo")
params = muon_params()
opt = ZeroRedundancyOptimizer(params, optimizer_class=Muon, lr={lr}, weight_decay=0.1, adjust_lr_fn="match_rms_adamw",
                                 ns_dtype=torch.bfloat16)
muon_steps(opt, params)
if dist.get_rank() == 0:
    torch.save([p.detach() for p in params], {out!r})
dist.destroy_process_group()
"""


def test_zero1_equals_one_process_torch_muon(tmp_path):
    """Two gloo ranks, each updating its share of the matrices with batched Muon and broadcasting it (ZeRO-1),
    end where torch.optim.Muon in one process does."""
    out = tmp_path / "zero1.pt"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = _ZERO1_WORKER.format(root=str(ROOT), lr=LR, out=str(out))
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=dict(os.environ, RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                                  MASTER_PORT=str(port), OMP_NUM_THREADS="1"))
             for r in range(2)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]
    ref_params = muon_params()
    muon_steps(torch.optim.Muon(ref_params, lr=LR, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"), ref_params)
    assert_bf16_close(torch.load(out, weights_only=True), ref_params, "match_rms_adamw")


class _Kernels(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def test_a_124m_step_is_a_few_dozen_kernels_not_thousands():
    """Counted on meta tensors (exact for any device): 84 hidden matrices in 4 shape groups."""
    with torch.device("meta"):
        model = Transformer(ModelConfig(preset="124m").resolved(2048))
    hidden = optim.param_groups(model, 0.1)[0]
    for p in hidden:
        p.grad = torch.empty_like(p)
    counts = {}
    for name, cls in (("torch", torch.optim.Muon), ("ours", Muon)):
        opt = cls(hidden, lr=LR, adjust_lr_fn="match_rms_adamw")
        opt.step()
        with _Kernels() as k:
            opt.step()
        counts[name] = k.count
    assert counts["torch"] > 20 * len(hidden)  # per matrix: 5 iterations x 3 matmuls, norm, casts, updates
    assert counts["ours"] < 100, counts
