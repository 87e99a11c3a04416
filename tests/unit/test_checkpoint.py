import torch

from llm_core import checkpoint, optim
from llm_core.config import TrainConfig
from llm_core.model import Transformer
from tests.helpers import tiny_model_config


def make():
    model = Transformer(tiny_model_config())
    opts = optim.build_optimizers(model, TrainConfig(), "cpu")
    model(torch.randint(0, 512, (2, 8))).sum().backward()
    for o in opts:
        o.step()
    return model, opts


def test_roundtrip_weights_optimizer_rng(tmp_path):
    model, opts = make()
    torch.manual_seed(5)
    path = checkpoint.save_checkpoint(tmp_path, 3, model, opts, {"step": 3, "tokens": 10}, keep=2)
    expected_rand = torch.rand(3)
    model2 = Transformer(tiny_model_config())
    opts2 = optim.build_optimizers(model2, TrainConfig(), "cpu")
    state = checkpoint.load_checkpoint(path, model2, opts2)
    assert state["step"] == 3
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = opts[0].state_dict()["state"], opts2[0].state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    assert torch.equal(torch.rand(3), expected_rand)


def test_incomplete_folder_is_never_loaded_and_keep_last(tmp_path):
    model, opts = make()
    for step in (1, 2, 3):
        checkpoint.save_checkpoint(tmp_path, step, model, opts, {"step": step}, keep=2)
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step_0000002", "step_0000003"]
    # a folder killed mid-write: no COMPLETE marker
    broken = tmp_path / "step_0000009"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"garbage")
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_0000003"


def test_final_model_loads_back(tmp_path):
    model, _ = make()
    checkpoint.save_final(tmp_path, model, {"note": 1})
    loaded = checkpoint.load_model(tmp_path)
    x = torch.randint(0, 512, (1, 8))
    torch.testing.assert_close(loaded(x), model(x))


def test_missing_model_is_a_clear_error(tmp_path):
    try:
        checkpoint.load_model(tmp_path)
    except FileNotFoundError as e:
        assert "dvc repro" in str(e)
    else:
        raise AssertionError
