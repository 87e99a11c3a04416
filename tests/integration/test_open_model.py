"""Start from an open model, through the real stages: a tiny saved transformers model of each family is imported,
pretrained a few steps more on our data and fine-tuned for chat; the export is the same family and transformers
loads it with our logits and our chat template. Then the documented route end to end through the real `dvc repro`
on a copy of the repository: import only (pretrain.steps: 0), SFT, the same evaluation on the imported and the
fine-tuned model, and a different checkpoint in the same folder rerunning what follows."""

from __future__ import annotations

import copy
import json
import re
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from llm_core import export
from llm_core.data import chat, sources
from llm_core.data.tokenizer import Tokenizer
from llm_core.evaluation import hellaswag
from llm_core.model.io import load_model
from tests.helpers import ROOT, merge, pipeline_copy, run_ok, set_params, tiny_params
from tests.hf_folders import SHAPES, build, save_model

transformers = pytest.importorskip("transformers")

# the committed params with tiny training, the shape keys blank: the architecture is the imported folder's
TINY = tiny_params(
    data={"num_docs": 120, "sft": {"num_docs": 60}, "hellaswag": {"num_docs": 8}},
    tokenizer={"source": "hf"},
    model={"init": "hf", "n_layers": None, "d_model": None, "n_heads": None, "n_kv_heads": None, "ffn_hidden": None,
           "max_seq_len": None},  # model.init_path: the folder each test builds
    pretrain={"steps": 2, "batch_size": 2, "seq_len": 64, "eval_every": 2, "global_eval_tokens": 128, "compile": False,
              "threads": 1},
    sft={"steps": 2, "seq_len": 512, "eval_every": 2, "compile": False, "threads": 1},
    eval={"chat_items": 8},
)
CONV = [{"role": "user", "content": "What is Milo?"}, {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "What colour?"}]


def run_stage(repo: Path, monkeypatch, module: str, *args: str) -> None:
    """A stage script run as `python -m <module> <args>` would, in this process (no interpreter start-up)."""
    monkeypatch.chdir(repo)
    monkeypatch.setattr(sys, "argv", [module, *args])
    runpy.run_module(module, run_name="__main__", alter_sys=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """params.yaml and the downloaded built-in data, shared by the families."""
    repo = tmp_path_factory.mktemp("open_model")
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    set_params(repo, TINY)
    with pytest.MonkeyPatch.context() as mp:
        for kind in ("pretrain", "sft"):
            run_stage(repo, mp, "stages.download", kind, f"data/raw/{kind}")
    return repo


@pytest.mark.parametrize("name", ["llama3.2", "tinyllama", "qwen2", "mistral"])
def test_continued_pretraining_and_sft_then_export(name, data, tmp_path, monkeypatch, stories):
    repo = Path(shutil.copytree(data, tmp_path / "repo"))
    folder = build(tmp_path / "hf", name, stories[:200], max_position_embeddings=512)
    set_params(repo, {"model": {"init": "hf", "init_path": str(folder)}})
    run_stage(repo, monkeypatch, "stages.import_model", "models/init")
    run_stage(repo, monkeypatch, "stages.train_tokenizer", "data/raw/pretrain", "models/tokenizer")
    for kind in ("pretrain", "sft"):
        run_stage(repo, monkeypatch, "stages.tokenize", kind, "--raw", f"data/raw/{kind}", "--tokenizer",
                  "models/tokenizer", "--out", f"data/tokens/{kind}")
    run_stage(repo, monkeypatch, "stages.pretrain")
    run_stage(repo, monkeypatch, "stages.sft")

    init, pretrained, tuned = (load_model(repo / "models" / m) for m in ("init", "pretrain", "sft"))
    assert tuned.cfg.family == SHAPES[name]["family"] and tuned.cfg == pretrained.cfg
    for a, b in ((init, pretrained), (pretrained, tuned)):  # both stages moved the weights
        assert not torch.equal(a.layers[0].attn.wq.weight, b.layers[0].attn.wq.weight)
    for stage in ("pretrain", "sft"):
        assert 0 < json.loads((repo / f"metrics/{stage}.json").read_text())["val_loss"] < 100

    out = tmp_path / "export"
    export.main([str(repo / "models/sft"), str(out), "--tokenizer", str(repo / "models/tokenizer"), "--verify"])
    assert json.loads((out / "config.json").read_text())["model_type"] == SHAPES[name]["family"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    x = torch.randint(0, tuned.cfg.vocab_size, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, tuned.eval()(x), atol=1e-5, rtol=0)
    tok = Tokenizer.from_dir(repo / "models/tokenizer")
    theirs = transformers.AutoTokenizer.from_pretrained(out).apply_chat_template(CONV, tokenize=True,
                                                                                add_generation_prompt=True)
    theirs = theirs if isinstance(theirs, list) else theirs["input_ids"]
    assert chat.render(CONV, tok, add_generation_prompt=True)[0][-len(theirs):] == theirs


def test_import_stage_refuses_in_one_block(data, tmp_path, monkeypatch, capsys, stories):
    """A checkpoint it cannot import, and a params key contradicting the folder: the stage ends with the problem and
    the fix, no traceback, and no models/init."""
    repo = Path(shutil.copytree(data, tmp_path / "repo"))
    gemma = tmp_path / "gemma"
    transformers.GemmaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, head_dim=16,
                             intermediate_size=64).save_pretrained(gemma)
    qwen = build(tmp_path / "qwen", "qwen2", stories[:100])
    for model, expected in (({"init_path": str(gemma)}, "model_type 'gemma' is not supported"),
                            ({"init_path": str(qwen), "n_layers": 4}, "model.n_layers is 4 but")):
        set_params(repo, {"model": model})
        with pytest.raises(SystemExit) as exit_:
            run_stage(repo, monkeypatch, "stages.import_model", "models/init")
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "import_model: error: " in err and expected in err, err
        assert "Traceback" not in err and not (repo / "models/init").exists()


# --------------------------------------------------------------------------------------------------------------------
# the route of docs/model.md through the real dvc


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.mark.slow
def test_open_model_route_through_dvc(tmp_path, stories):
    folder = build(tmp_path / "hf" / "qwen2-tiny", "qwen2", stories[:200], max_position_embeddings=512)
    over = merge(copy.deepcopy(TINY), {
        "model": {"init": "hf", "init_path": str(folder)},
        "tokenize": {"workers": "auto"},  # encoder processes: the imported tokenizer travels to them
        "pretrain": {"steps": 0},  # import only: SFT starts from the open model
        "eval": {"model": "init", "max_items": 8},
    })
    repo = pipeline_copy(tmp_path / "repo", over)
    dvc = [sys.executable, "-m", "dvc"]
    out = run_ok(dvc + ["repro"], repo)
    assert {"import_model", "train_tokenizer", "tokenize", "tokenize_sft", "pretrain", "sft", "eval_hellaswag",
            "eval_chat", "sample"} <= set(ran(out))
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert any(d["path"] == str(folder) for d in lock["stages"]["import_model"]["deps"])  # the folder is hashed
    info = json.loads((repo / "models/init/init.json").read_text())
    assert info["family"] == "qwen2" and set(info["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    # import only: the pretrain stage's model is the imported one, scored on our validation text
    init, pretrained = load_model(repo / "models/init"), load_model(repo / "models/pretrain")
    assert all(torch.equal(a, b) for a, b in zip(init.state_dict().values(), pretrained.state_dict().values()))
    pre = json.loads((repo / "metrics/pretrain.json").read_text())
    assert pre["val_loss"] > 0 and "val_bpb" in pre

    # the same evaluations on the imported and on the fine-tuned model: only the evaluations rerun, and each time
    # the figures are those of the model eval.model names
    items = list(sources.read_dataset(repo / "data/raw/hellaswag", "val", "download_hellaswag"))[:8]
    tok = Tokenizer.from_dir(repo / "models/tokenizer")
    bpb = {}
    for model in ("init", "sft"):  # the first repro scored the imported model
        if model == "sft":
            set_params(repo, {"eval": {"model": model}})
            assert set(ran(run_ok(dvc + ["repro"], repo))) == {"eval_hellaswag", "eval_text", "eval_harness"}
        expected = hellaswag.score_items(load_model(repo / "models" / model), items, tok)
        scored = json.loads((repo / "metrics/hellaswag.json").read_text())
        assert {k: scored[k] for k in expected} == pytest.approx(expected)
        bpb[model] = json.loads((repo / "metrics/eval_text.json").read_text())["bits_per_byte"]
    assert bpb["init"] != bpb["sft"]  # bits per byte of the same text: what the fine-tune changed

    # another checkpoint in the same folder: the import reruns, and then the stages that read models/init are out of
    # date (pretrain, and from it everything after; train_tokenizer copies the same tokenizer, so the data stays)
    config = json.loads((folder / "config.json").read_text())
    save_model(folder, "qwen2", config["vocab_size"], seed=1, **{k: v for k, v in config.items() if k in (
        "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "tie_word_embeddings",
        "rope_theta", "max_position_embeddings", "eos_token_id")})
    assert ran(run_ok(dvc + ["repro", "import_model"], repo)) == ["import_model"]
    stale = set(re.findall(r"^(\w+):$", run_ok(dvc + ["status"], repo), re.M))
    assert stale == {"train_tokenizer", "pretrain"}
