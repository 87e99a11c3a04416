import os
import signal
import subprocess
import sys

import torch

from llm_core import distributed
from llm_core.config import TrainConfig
from llm_core.model.io import load_model
from llm_core.model.transformer import Transformer
from llm_core.training import checkpoint, optim
from tests.helpers import tiny_model_config

SOLO = distributed.Context()


def make(optimizer="adamw"):
    model = Transformer(tiny_model_config())
    opts = optim.build_optimizers(model, TrainConfig(optimizer=optimizer), "cpu")
    model(torch.randint(0, 512, (2, 8))).sum().backward()
    for o in opts:
        o.step()
    return model, opts


def save(root, step, model, opts, keep=2):
    return checkpoint.save_checkpoint(root, step, model.cfg, distributed.model_state(model, SOLO),
                                      distributed.optimizer_states(model, opts, SOLO), {"step": step, "tokens": 10},
                                      keep=keep)


def test_roundtrip_weights_optimizer_rng(tmp_path):
    for optimizer in ("adamw", "muon"):
        model, opts = make(optimizer)
        torch.manual_seed(5)
        path = save(tmp_path / optimizer, 3, model, opts)
        expected_rand = torch.rand(3)
        model2 = Transformer(tiny_model_config())
        opts2 = optim.build_optimizers(model2, TrainConfig(optimizer=optimizer), "cpu")
        blob = checkpoint.load_checkpoint(path)
        model2.load_state_dict(blob["weights"])
        distributed.load_optimizer_states(model2, opts2, blob["optimizers"], SOLO)
        checkpoint.restore_rng(blob["rng"])
        assert blob["state"]["step"] == 3
        for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
            assert torch.equal(a, b)
        for o1, o2 in zip(opts, opts2):
            s1, s2 = o1.state_dict(), o2.state_dict()
            assert s1["param_groups"] == s2["param_groups"]
            for k in s1["state"]:
                for name, v in s1["state"][k].items():
                    assert torch.equal(v, s2["state"][k][name]), (k, name)
        assert torch.equal(torch.rand(3), expected_rand)


def test_optimizer_state_is_keyed_by_parameter_name(tmp_path):
    model, opts = make("muon")
    blob = checkpoint.load_checkpoint(save(tmp_path, 1, model, opts))
    muon, adam = blob["optimizers"]
    assert "layers.0.attn.wq.weight" in muon["state"] and "tok_emb.weight" in adam["state"]
    assert "momentum_buffer" in muon["state"]["layers.0.attn.wq.weight"]


def test_incomplete_folder_is_never_loaded_and_keep_last(tmp_path):
    model, opts = make()
    for step in (1, 2, 3):
        save(tmp_path, step, model, opts)
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step_0000002", "step_0000003"]
    # a folder killed mid-write: no COMPLETE marker
    broken = tmp_path / "step_0000009"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"garbage")
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_0000003"
    try:
        checkpoint.load_checkpoint(broken)
    except ValueError as e:
        assert "COMPLETE" in str(e)
    else:
        raise AssertionError


def test_process_killed_inside_save_leaves_nothing_loadable(tmp_path):
    code = ("import torch, sys; sys.path.insert(0, '.');"
            "from tests.unit.test_checkpoint import make, save; from pathlib import Path;"
            "m, o = make(); save(Path(sys.argv[1]), 1, m, o); save(Path(sys.argv[1]), 2, m, o)")
    env = dict(os.environ, **{checkpoint.FAULT_ENV: "in_checkpoint:2"})
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (tmp_path / ".tmp-step_0000002" / "model.safetensors").exists()  # it died mid-write...
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_0000001"  # ...and step 1 is what resumes


def test_final_model_loads_back(tmp_path):
    model, _ = make()
    checkpoint.save_final(tmp_path, model.cfg, model.state_dict(), {"note": 1})
    loaded = load_model(tmp_path)
    x = torch.randint(0, 512, (1, 8))
    torch.testing.assert_close(loaded(x), model(x))


def test_missing_model_is_a_clear_error(tmp_path):
    try:
        load_model(tmp_path)
    except FileNotFoundError as e:
        assert "dvc repro" in str(e)
    else:
        raise AssertionError
