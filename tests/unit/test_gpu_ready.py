"""What a GPU run depends on, checked on the CPU: the training forward and loss trace as one graph for
torch.compile, a training step reads the device once, bf16 inference keeps fp32 buffers, FSDP2's mixed precision,
the MFU peak per form factor, and curves written without dvclive in dvclive's own layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from llm_core import distributed
from llm_core.config import ParallelConfig
from llm_core.inference.loading import inference_dtype
from llm_core.model.transformer import Transformer
from llm_core.training.curves import PlainLive
from llm_core.training.loop import Trainer
from llm_core.training.tracking import peak_flops_for
from tests.helpers import ROOT, stream_job, tiny_model_config, train_config

# One process, two Dynamo traces of the loop's `forward_loss` on the tiny preset: first without params tracing (no
# hook installed), then with LLM_CORE_TRACE_PARAMS set, the model built from params.yaml's traced config, packed
# rows' document mask on and bf16 autocast (what a GPU step runs).
_EXPLAIN = """
import json, sys, torch
from llm_core.config import ModelConfig, load_params
from llm_core.model.transformer import Transformer
from llm_core.training.loop import forward_loss

def explain(fn, *args):
    torch._dynamo.reset()
    e = torch._dynamo.explain(fn)(*args)
    return {"graphs": e.graph_count, "breaks": e.graph_break_count,
            "reasons": [r.reason.splitlines()[0] for r in e.break_reasons]}

def autocast_loss(model, x, y, docs):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return forward_loss(model, x, y, docs)

torch.manual_seed(0)
x, y = torch.randint(0, 512, (2, 48)), torch.randint(0, 512, (2, 48))
off = explain(forward_loss, Transformer(ModelConfig(preset="tiny").resolved(512)), x, y, None)
params = load_params(sys.argv[1], overrides={"model.preset": "tiny"})  # tracing starts here
model = Transformer(params.model.resolved(512))
on = explain(autocast_loss, model, x, y, (x == 3).cumsum(dim=1))
print(json.dumps({"off": off, "on": on}))
"""


def test_forward_and_loss_compile_as_one_graph_with_params_tracing_off_and_on(tmp_path):
    trace = tmp_path / "keys.jsonl"
    env = {**os.environ, "LLM_CORE_TRACE_PARAMS": str(trace), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _EXPLAIN, str(ROOT / "params.yaml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for case in ("off", "on"):
        assert result[case] == {"graphs": 1, "breaks": 0, "reasons": []}, (case, result[case])
    # tracing really was on in the second trace: the process recorded the keys it read
    keys = json.loads(trace.read_text().splitlines()[-1])["keys"]
    assert "model.preset" in keys


# --------------------------------------------------------------------------------------------------------------------
# one host sync per training step

_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy", "cpu"}


class _DeviceReads(TorchFunctionMode):
    """Tensor reads to the host made by our code (llm_core): each one is a device sync on a GPU. torch's own CPU
    paths (AdamW's step counters on a CPU) are not ours and stay asynchronous on CUDA."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in _READS:
            caller = sys._getframe(1).f_code
            if "/llm_core/" in caller.co_filename:
                self.reads.append(f"{func.__name__} in {caller.co_filename.rsplit('/', 1)[-1]}:{caller.co_name}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("optimizer,model_kw", [
    ("adamw", {}),
    ("muon", {}),
    ("muon", dict(ffn="moe", n_experts=4, top_k=2, expert_hidden=32, moe_path="grouped")),
])
def test_a_training_step_reads_the_device_once(tmp_path, optimizer, model_kw):
    cfg = train_config(optimizer=optimizer, grad_accum=2, threads=1)
    trainer = Trainer(tiny_model_config(**model_kw), cfg, ParallelConfig(), stream_job(tmp_path), quiet=True)
    trainer.train_step()  # first step: optimizer state is created
    with _DeviceReads() as mode:
        metrics = trainer.train_step()
    assert mode.reads == ["tolist in loop.py:train_step"]
    assert np.isfinite(metrics["train/loss"]) and metrics["train/grad_norm"] > 0


# --------------------------------------------------------------------------------------------------------------------
# dtypes


def test_bf16_inference_keeps_fp32_buffers():
    assert inference_dtype(torch.device("cuda")) == torch.bfloat16
    assert inference_dtype(torch.device("cpu")) == torch.float32
    cfg = tiny_model_config(max_seq_len=512, ffn="moe", n_experts=4, expert_hidden=32)
    model = Transformer(cfg)
    ref = Transformer(cfg)
    ref.load_state_dict(model.state_dict())
    model.to(torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {b.dtype for b in model.buffers()} == {torch.float32}
    torch.testing.assert_close(model.rope_cos_16, ref.rope_cos_16, rtol=0, atol=0)  # exact, not re-rounded
    x = torch.randint(0, 512, (1, 400))
    with torch.no_grad():
        diff = (model(x).float() - ref(x)).abs().max().item()
    assert diff < 0.05  # bf16 weights and activations; fp32 tables keep late positions as accurate as early ones


def test_fsdp_gathers_bf16_parameters_and_reduces_in_fp32(monkeypatch):
    policy = distributed.fsdp_mixed_precision(torch.bfloat16)
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32
    assert distributed.fsdp_mixed_precision(None) is None
    calls = []
    import torch.distributed.fsdp as fsdp

    monkeypatch.setattr(fsdp, "fully_shard", lambda module, **kw: calls.append(kw))
    model = Transformer(tiny_model_config())
    distributed.wrap(model, "fsdp", distributed.Context(world=2), torch.bfloat16)
    assert len(calls) == len(model.layers) + 1 and all(kw["mp_policy"] == policy for kw in calls)


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA H200 NVL", 835e12), ("NVIDIA GH200 480GB", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L40S", 362e12), ("NVIDIA L40", 181e12), ("NVIDIA L4", 121e12),
    ("Some Unknown GPU", 0.0),
])
def test_mfu_peak_tells_sxm_nvl_and_pcie_apart(name, peak):
    assert peak_flops_for(name) == peak


# --------------------------------------------------------------------------------------------------------------------
# curves without dvclive


def _log(live, steps):
    for step, values in steps:
        live.step = step
        for key, value in values.items():
            live.log_metric(key, value)
        live.next_step()


def _files(folder):
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_plain_curves_are_the_files_dvclive_writes(tmp_path):
    from dvclive import Live

    first = [(1, {"train/loss": 2.5, "train/lr": 1e-3}), (2, {"train/loss": 2.25, "train/lr": 2e-3}),
             (3, {"train/loss": float("nan"), "val/loss": 2.0, "val/hellaswag_acc": 0.25})]
    second = [(3, {"train/loss": 2.0, "train/lr": 3e-3}), (4, {"val/loss": 1.5})]
    written = {}
    for name, make in (("dvclive", lambda d, r: Live(str(d), resume=r, dvcyaml=None, save_dvc_exp=False,
                                                      report=None)),
                       ("plain", lambda d, r: PlainLive(d, resume=r, dvcyaml=None, save_dvc_exp=False, report=None))):
        folder = tmp_path / name
        (folder / "plots" / "metrics").mkdir(parents=True)
        (folder / "plots" / "metrics" / "stale.tsv").write_text("step\tstale\n9\t1\n")  # a fresh run clears it
        live = make(folder, False)
        _log(live, first)
        live.end()
        live = make(folder, True)  # a resumed run appends
        _log(live, second)
        live.end()
        written[name] = _files(folder)
    assert written["plain"] == written["dvclive"]
    assert "plots/metrics/train/loss.tsv" in written["plain"] and "stale" not in str(written["plain"])
