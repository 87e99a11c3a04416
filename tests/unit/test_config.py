import pytest
import yaml

from llm_core.config import PRESETS, ModelConfig, ParamsError, load_params


def write(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_committed_params_load_and_resolve():
    params = load_params("params.yaml")
    cfg = params.model.resolved(2048)
    assert cfg.n_layers >= 1 and cfg.vocab_size == 2048
    assert params.pretrain.seq_len <= cfg.max_seq_len


def test_every_preset_resolves_and_counts_params():
    for name in PRESETS:
        cfg = ModelConfig(preset=name).resolved(50304)
        assert cfg.num_params() > 0 and cfg.flops_per_token(1024) > 6 * cfg.num_params(embeddings=False)
    big = ModelConfig(preset="1.3b").resolved(50304).num_params()
    assert 1.0e9 < big < 1.6e9


def test_unknown_key_names_key_and_allowed(tmp_path):
    p = write(tmp_path, "pretrain:\n  stepz: 3\n")
    with pytest.raises(ParamsError, match=r"unknown key pretrain\.stepz.*steps"):
        load_params(p)


def test_unknown_section(tmp_path):
    with pytest.raises(ParamsError, match="unknown key modle"):
        load_params(write(tmp_path, "modle: {}\n"))


def test_wrong_type(tmp_path):
    with pytest.raises(ParamsError, match=r"pretrain\.steps must be an integer \(got 'many'\)"):
        load_params(write(tmp_path, "pretrain:\n  steps: many\n"))


def test_wrong_value(tmp_path):
    with pytest.raises(ParamsError, match=r"pretrain\.warmup_steps must be >= 0 \(got -5\)"):
        load_params(write(tmp_path, "pretrain:\n  warmup_steps: -5\n"))
    with pytest.raises(ParamsError, match=r"parallel\.mode must be one of none, ddp, zero1, fsdp"):
        load_params(write(tmp_path, "parallel:\n  mode: tp\n"))
    with pytest.raises(ParamsError, match=r"model\.preset must be one of"):
        load_params(write(tmp_path, "model:\n  preset: huge\n"))


def test_model_shape_checks(tmp_path):
    with pytest.raises(ParamsError, match="n_kv_heads"):
        load_params(write(tmp_path, "model:\n  n_heads: 6\n  n_kv_heads: 4\n"))
    with pytest.raises(ParamsError, match=r"pretrain\.seq_len \(512\) exceeds"):
        load_params(write(tmp_path, "pretrain:\n  seq_len: 512\n"))


def test_overrides_and_yaml_floats(tmp_path):
    p = write(tmp_path, "pretrain:\n  lr: 3e-4\n")
    params = load_params(p, overrides={"model.n_layers": 3})
    assert params.pretrain.lr == pytest.approx(3e-4)
    assert params.model.resolved(512).n_layers == 3


def test_local_source_needs_paths(tmp_path):
    with pytest.raises(ParamsError, match=r"data\.source=local needs data\.paths"):
        load_params(write(tmp_path, "data:\n  source: local\n"))


def test_params_file_documents_every_key():
    # every key line of the committed params.yaml carries a comment (the text of a block scalar is a value, not keys)
    block_indent = None
    for line in open("params.yaml"):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if block_indent is not None and (not stripped or indent > block_indent):
            continue
        block_indent = indent if stripped.endswith(("|", "|-", ">", ">-")) else None
        is_section = stripped.endswith(":") and not line.startswith(" ")
        if stripped and not stripped.startswith(("#", "-")) and ":" in stripped and not is_section:
            assert "#" in line, f"params.yaml line without a comment: {line!r}"


def test_dvc_yaml_params_and_paths_resolve():
    """Every param a stage declares exists in params.yaml; every code dep exists; stage outputs feed later stages."""
    import os

    params = yaml.safe_load(open("params.yaml"))
    dvc = yaml.safe_load(open("dvc.yaml"))
    outs = set()
    for name, stage in dvc["stages"].items():
        for key in stage.get("params", []):
            node = params
            for part in key.split("."):
                assert part in node, f"stage {name}: param {key} missing from params.yaml"
                node = node[part]
        for dep in stage["deps"]:
            dep = dep.replace("${eval.model}", params["eval"]["model"]).replace("${sample.model}",
                                                                                params["sample"]["model"])
            dep = dep.replace("${model.init_path}", params["model"]["init_path"])
            # code, or the folder of an open model (an input from outside: the default is the committed hf/)
            if dep.startswith(("stages/", "llm_core/")) or dep == params["model"]["init_path"]:
                assert os.path.exists(dep), f"stage {name}: missing code dep {dep}"
            else:
                assert any(dep == o or dep.startswith(o + "/") for o in outs), f"stage {name}: {dep} has no producer"
        for out in stage.get("outs", []):
            outs.add(out if isinstance(out, str) else next(iter(out)))
        for m in stage.get("metrics", []):
            outs.add(next(iter(m)))
        assert f"stages.{name.split('_')[0]}" in stage["cmd"] or f"stages.{name}" in stage["cmd"]


def test_open_model_params(tmp_path):
    params = load_params(write(tmp_path, "model:\n  init: hf\n  init_path: hf/x\ntokenizer:\n  source: hf\n"
                                         "pretrain:\n  steps: 0\n  seq_len: 1024\neval:\n  model: init\n"))
    assert params.model.init == "hf" and params.pretrain.steps == 0  # seq_len: checked against the folder's
    with pytest.raises(ParamsError, match=r"pretrain\.steps: 0 \(import only\) needs model\.init: hf"):
        load_params(write(tmp_path, "pretrain:\n  steps: 0\n"))
    with pytest.raises(ParamsError, match=r"eval\.model: init reads the imported model .* model\.init is not hf"):
        load_params(write(tmp_path, "eval:\n  model: init\n"))
    with pytest.raises(ParamsError, match=r"model\.init must be one of , hf \(got 'yes'\)"):
        load_params(write(tmp_path, "model:\n  init: 'yes'\n"))
    with pytest.raises(ParamsError, match=r"tokenizer\.source must be train, hf or tiktoken"):
        load_params(write(tmp_path, "tokenizer:\n  source: hf:SmolLM2\n"))
    with pytest.raises(ParamsError, match=r"unknown key model\.qkv_bias"):  # set by an imported folder only
        load_params(write(tmp_path, "model:\n  qkv_bias: true\n"))
    assert "init" not in ModelConfig().resolved(300).to_dict()  # where weights come from is not architecture
