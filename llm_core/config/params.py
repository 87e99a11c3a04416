"""The params sections other than the model, the `Params` root, and loading params.yaml into them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llm_core.config.base import (TRACE_ENV, ParamsError, _at_least, _auto_or_int, _choice, _Section,
                                  start_trace)
from llm_core.config.model import NOT_PARAMS, ModelConfig

PARAMS_FILE = "params.yaml"
MODELS = ("pretrain", "sft", "init")  # the model folders under models/ that evaluation and sampling can read


@dataclass
class SourceConfig(_Section):
    """Where one dataset comes from. Keys that do not apply to the chosen source are ignored."""

    source: str = "synthetic"  # synthetic | local | url | hf
    num_docs: int = 1000  # synthetic: how many documents / conversations / items to generate
    paths: list[str] = field(default_factory=list)  # local: files or globs (txt, jsonl, parquet)
    encoding: str = "utf-8"  # local/url: text encoding of the files
    url: str = ""  # url: http(s) address of a txt / jsonl / parquet file
    sha256: str = ""  # url: expected checksum of the download (empty = not checked)
    hf_path: str = ""  # hf: dataset name on the hub (or a local dataset folder)
    hf_name: str = ""  # hf: dataset config name
    hf_split: str = "train"  # hf: split to stream
    hf_revision: str = ""  # hf: dataset revision (commit sha or tag) read and recorded; empty = the newest commit
    column: str = ""  # text column (pretrain: "text", sft: "messages"); empty = the dataset kind's default
    max_docs: int = 0  # stop after this many documents (0 = no limit)
    max_bytes: int = 0  # stop after this many UTF-8 bytes of text (0 = no limit)

    def validate(self, prefix: str) -> None:
        _choice(f"{prefix}.source", self.source, ("synthetic", "local", "url", "hf"))
        _at_least(f"{prefix}.num_docs", self.num_docs, 1)
        _at_least(f"{prefix}.max_docs", self.max_docs, 0)
        _at_least(f"{prefix}.max_bytes", self.max_bytes, 0)
        try:
            "".encode(self.encoding)
        except LookupError:
            raise ParamsError(f"params.yaml: {prefix}.encoding: unknown text encoding {self.encoding!r} "
                              "(use a Python codec name such as utf-8, cp1252, latin-1)") from None
        if self.source == "local" and not self.paths:
            raise ParamsError(f"params.yaml: {prefix}.source=local needs {prefix}.paths "
                              "(a list of files or globs of .txt, .jsonl or .parquet)")
        if self.source == "url" and not self.url:
            raise ParamsError(f"params.yaml: {prefix}.source=url needs {prefix}.url")
        if self.source == "hf" and not self.hf_path:
            raise ParamsError(f"params.yaml: {prefix}.source=hf needs {prefix}.hf_path (e.g. roneneldan/TinyStories)")


@dataclass
class DataConfig(SourceConfig):
    """The pretraining corpus at top level, the SFT chats and HellaSwag items in their own sub-sections."""

    num_docs: int = 20000
    seed: int = 1234  # seeds the built-in world and the train/val split
    val_fraction: float = 0.02  # share of documents held out for validation
    notes_every: int = 0  # synthetic: every n-th pretraining document is a note (pets and toys told, asked back)
    sft: SourceConfig = field(default_factory=lambda: SourceConfig(num_docs=4000))
    hellaswag: SourceConfig = field(default_factory=lambda: SourceConfig(num_docs=500, hf_split="validation"))
    # the in-training HellaSwag curve's own items: evaluating on other items (`hellaswag`) never retrains
    probe: SourceConfig = field(default_factory=lambda: SourceConfig(num_docs=100, hf_split="validation"))

    def validate(self, prefix: str = "data") -> None:
        super().validate(prefix)
        self.sft.validate(f"{prefix}.sft")
        self.hellaswag.validate(f"{prefix}.hellaswag")
        self.probe.validate(f"{prefix}.probe")
        _at_least(f"{prefix}.notes_every", self.notes_every, 0)
        if not 0.0 < self.val_fraction < 0.5:
            raise ParamsError(f"params.yaml: data.val_fraction must be in (0, 0.5) (got {self.val_fraction})")


@dataclass
class TokenizerConfig(_Section):
    vocab_size: int = 2048  # including the special tokens
    min_frequency: int = 2  # a pair must occur this often to be merged
    train_bytes: int = 0  # train on at most this many bytes of the corpus (0 = all of it)
    # train (BPE on our corpus) | tiktoken:<encoding>, e.g. tiktoken:gpt2 | hf (the folder model.init_path's)
    source: str = "train"

    def validate(self) -> None:
        _at_least("tokenizer.vocab_size", self.vocab_size, 300)
        _at_least("tokenizer.min_frequency", self.min_frequency, 1)
        _at_least("tokenizer.train_bytes", self.train_bytes, 0)
        if self.source not in ("train", "hf") and not (self.source.startswith("tiktoken:")
                                                       and self.source[len("tiktoken:"):]):
            raise ParamsError(f"params.yaml: tokenizer.source must be train, hf or tiktoken:<encoding> such as "
                              f"tiktoken:gpt2 or tiktoken:cl100k_base (got {self.source!r})")


@dataclass
class TokenizeConfig(_Section):
    shard_tokens: int = 10_000_000  # tokens per .npy shard
    workers: int | str = "auto"  # encoding processes: auto = all cores

    def validate(self) -> None:
        _at_least("tokenize.shard_tokens", self.shard_tokens, 1024)
        _auto_or_int("tokenize.workers", self.workers)

    def num_workers(self) -> int:
        return (os.cpu_count() or 1) if self.workers == "auto" else int(self.workers)


@dataclass
class TrainConfig(_Section):
    """One schema for pretraining and SFT: both run through the same loop."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 16  # sequences per micro-batch per rank
    seq_len: int = 256  # tokens per sequence (<= model max_seq_len)
    grad_accum: int = 1  # micro-batches per optimizer step (used when global_batch_tokens is 0)
    global_batch_tokens: int = 0  # tokens per optimizer step over all ranks; > 0 derives grad_accum from it
    optimizer: str = "adamw"  # adamw | muon
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | wsd | constant
    weight_decay: float = 0.1  # on 2-D weights only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    eval_every: int = 100  # steps between validation passes
    global_eval_tokens: int = 32768  # validation tokens per pass over all ranks together (whole rows of seq_len),
    # split across the ranks: the same rows, so the same val_loss, whatever the process count
    checkpoint_every: int = 200  # steps between checkpoints
    keep_checkpoints: int = 2  # newest complete checkpoints kept
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    compile: str | bool = "auto"  # auto (on CUDA) | true | false
    seed: int = 1337
    threads: int | str = "auto"  # CPU threads for torch (auto = all cores)
    on_nonfinite: str = "halt"  # a NaN/inf loss or grad norm: halt (keep the last good checkpoint) | skip the step
    peak_flops: float = 0.0  # the accelerator's peak FLOP/s for MFU (0 = look up the GPU by name)
    final: str = "best"  # the stage's output model: best (lowest validation loss) | last (weights after the last step)
    early_stop_patience: int = 0  # stop after this many validation passes without improvement (0 = never)
    activation_checkpointing: str = "none"  # recompute block activations in backward: none | full | every_k
    activation_checkpointing_k: int = 2  # every_k: recompute every k-th block (blocks 0, k, 2k, ...)
    doc_mask: bool = True  # packed rows: a token attends only to its own document (each <|bos|> opens one)

    def eval_rows(self) -> int:
        """Validation rows per pass over all ranks (before capping at the validation split's size)."""
        return self.global_eval_tokens // self.seq_len

    def accum_steps(self, world: int, prefix: str) -> int:
        """Micro-batches per optimizer step on `world` ranks: `grad_accum`, or derived from `global_batch_tokens`."""
        if not self.global_batch_tokens:
            return self.grad_accum
        per_micro = self.batch_size * self.seq_len * world
        if self.global_batch_tokens % per_micro:
            raise ParamsError(
                f"params.yaml: {prefix}.global_batch_tokens ({self.global_batch_tokens}) must be a multiple of "
                f"{prefix}.batch_size x {prefix}.seq_len x ranks = {self.batch_size} x {self.seq_len} x {world} = "
                f"{per_micro}; change one of them (or set {prefix}.global_batch_tokens: 0 to use "
                f"{prefix}.grad_accum)")
        return self.global_batch_tokens // per_micro

    def validate(self, prefix: str) -> None:
        _at_least(f"{prefix}.steps", self.steps, 0 if prefix == "pretrain" else 1)  # 0: import only
        for key in ("batch_size", "seq_len", "grad_accum", "eval_every", "checkpoint_every", "keep_checkpoints"):
            _at_least(f"{prefix}.{key}", getattr(self, key), 1)
        if self.global_eval_tokens < self.seq_len:
            raise ParamsError(f"params.yaml: {prefix}.global_eval_tokens must be at least one row of "
                              f"{prefix}.seq_len = {self.seq_len} tokens (got {self.global_eval_tokens})")
        _at_least(f"{prefix}.warmup_steps", self.warmup_steps, 0)
        _choice(f"{prefix}.optimizer", self.optimizer, ("adamw", "muon"))
        _choice(f"{prefix}.schedule", self.schedule, ("cosine", "wsd", "constant"))
        _choice(f"{prefix}.on_nonfinite", self.on_nonfinite, ("halt", "skip"))
        _choice(f"{prefix}.final", self.final, ("best", "last"))
        _choice(f"{prefix}.activation_checkpointing", self.activation_checkpointing, ("none", "full", "every_k"))
        _at_least(f"{prefix}.activation_checkpointing_k", self.activation_checkpointing_k, 1)
        _at_least(f"{prefix}.early_stop_patience", self.early_stop_patience, 0)
        _choice(f"{prefix}.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _choice(f"{prefix}.compile", self.compile, ("auto", True, False))
        _auto_or_int(f"{prefix}.threads", self.threads)
        if not self.lr > 0:
            raise ParamsError(f"params.yaml: {prefix}.lr must be > 0 (got {self.lr})")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ParamsError(f"params.yaml: {prefix}.min_lr_ratio must be between 0 and 1 (got {self.min_lr_ratio})")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ParamsError(f"params.yaml: {prefix}.{key} must be in [0, 1) (got {getattr(self, key)})")
        for key in ("weight_decay", "grad_clip", "global_batch_tokens", "peak_flops"):
            _at_least(f"{prefix}.{key}", getattr(self, key), 0)
        self.accum_steps(1, prefix)  # the rank count is known at launch; the per-rank part is checked now


@dataclass
class ParallelConfig(_Section):
    mode: str = "none"  # none | ddp | zero1 | fsdp
    nproc: int | str = "auto"  # processes per node: auto = all GPUs (1 on CPU), or an int
    nnodes: int = 1  # machines taking part
    node_rank: int | str = 0  # this machine's index (multi-node); auto = $SLURM_NODEID or $NODE_RANK
    rdzv_endpoint: str = "127.0.0.1:29500"  # host:port of the c10d rendezvous (multi-node: node 0's address)
    rdzv_id: str = "llm-run"  # job id shared by all nodes
    backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo

    def validate(self) -> None:
        _choice("parallel.mode", self.mode, ("none", "ddp", "zero1", "fsdp"))
        _auto_or_int("parallel.nproc", self.nproc)
        _at_least("parallel.nnodes", self.nnodes, 1)
        if self.node_rank != "auto" and (isinstance(self.node_rank, str) or self.node_rank < 0):
            raise ParamsError(f"params.yaml: parallel.node_rank must be auto or an integer >= 0 (got {self.node_rank!r})")
        _choice("parallel.backend", self.backend, ("auto", "nccl", "gloo"))
        if self.nnodes > 1 and self.mode == "none":
            raise ParamsError("params.yaml: parallel.nnodes > 1 needs parallel.mode ddp, zero1 or fsdp (got none)")
        if self.node_rank != "auto" and self.node_rank >= self.nnodes:
            raise ParamsError(f"params.yaml: parallel.node_rank ({self.node_rank}) must be < parallel.nnodes "
                              f"({self.nnodes})")


@dataclass
class TextEvalConfig(_Section):
    """The text eval_text scores: the pretraining corpus's validation split, or a source like the data's."""

    source: str = "pretrain_val"  # pretrain_val (data/raw/pretrain, split val) | local | url | hf
    paths: list[str] = field(default_factory=list)  # local: files or globs (txt, jsonl, parquet)
    encoding: str = "utf-8"  # local/url: text encoding of the files
    url: str = ""  # url: http(s) address of a txt / jsonl / parquet file
    sha256: str = ""  # url: expected checksum of the download (empty = not checked)
    hf_path: str = ""  # hf: dataset name on the hub (or a local dataset folder)
    hf_name: str = ""  # hf: dataset config name
    hf_split: str = "validation"  # hf: split to stream
    column: str = ""  # text column (empty = text)
    max_docs: int = 0  # score at most this many documents (0 = all)
    max_bytes: int = 0  # stop after the document that reaches this many UTF-8 bytes (0 = no limit)

    def validate(self, prefix: str = "eval.text") -> None:
        _choice(f"{prefix}.source", self.source, ("pretrain_val", "local", "url", "hf"))
        if self.source != "pretrain_val":
            self.as_source().validate(prefix)
        _at_least(f"{prefix}.max_docs", self.max_docs, 0)
        _at_least(f"{prefix}.max_bytes", self.max_bytes, 0)

    def as_source(self) -> SourceConfig:
        """The same source as a data section (its reader applies no limit: eval_text applies max_docs/max_bytes)."""
        keys = ("source", "paths", "encoding", "url", "sha256", "hf_path", "hf_name", "hf_split", "column")
        return SourceConfig(**{k: getattr(self, k) for k in keys})


@dataclass
class EvalConfig(_Section):
    model: str = "pretrain"  # which checkpoint to score: pretrain | sft | init (the imported model)
    max_items: int = 0  # score at most this many items (0 = all)
    batch_size: int = 32  # items per forward pass
    chat_items: int = 200  # held-out chat questions scored by eval_chat
    hellaswag_every: int = 0  # pretraining: score the probe items (data.probe) every this many steps (0 = off)
    text: TextEvalConfig = field(default_factory=TextEvalConfig)  # eval_text's corpus
    harness_tasks: list[str] = field(default_factory=list)  # eval_harness: lm-evaluation-harness tasks ([] = off)
    harness_limit: int = 0  # eval_harness: at most this many items per task (0 = all)
    harness_include: str = ""  # eval_harness: a folder of extra task yaml files ("" = only the harness's)

    def validate(self) -> None:
        _choice("eval.model", self.model, MODELS)
        _at_least("eval.max_items", self.max_items, 0)
        _at_least("eval.batch_size", self.batch_size, 1)
        _at_least("eval.chat_items", self.chat_items, 1)
        _at_least("eval.hellaswag_every", self.hellaswag_every, 0)
        self.text.validate()
        for i, task in enumerate(self.harness_tasks):
            if not task.strip():
                raise ParamsError(f"params.yaml: eval.harness_tasks[{i}] is empty; name an lm-evaluation-harness "
                                  "task such as hellaswag or arc_easy")
        _at_least("eval.harness_limit", self.harness_limit, 0)


@dataclass
class SampleConfig(_Section):
    model: str = "sft"  # pretrain | sft | init
    prompts: list[str] = field(default_factory=lambda: ["Once upon a time"])  # plain text continuations
    chat_prompts: list[str] = field(default_factory=list)  # user messages rendered through the chat template
    max_new_tokens: int = 96
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 50  # 0 = off
    top_p: float = 0.95  # 1.0 = off
    repetition_penalty: float = 1.1  # 1.0 = off
    seed: int = 42
    prompts_file: str = ""  # "" = none; .txt (one prompt per line) or .jsonl (`prompt` or `messages` per line)
    max_batch: int = 64  # sequences decoded together; more prompts wait and join as rows free up

    def validate(self) -> None:
        _choice("sample.model", self.model, MODELS)
        _at_least("sample.max_new_tokens", self.max_new_tokens, 1)
        _at_least("sample.max_batch", self.max_batch, 1)
        if self.prompts_file and not self.prompts_file.endswith((".txt", ".jsonl")):
            raise ParamsError(f"params.yaml: sample.prompts_file must end in .txt or .jsonl, or be \"\" "
                              f"(got {self.prompts_file!r})")
        _at_least("sample.temperature", self.temperature, 0)
        _at_least("sample.top_k", self.top_k, 0)
        if not 0 < self.top_p <= 1:
            raise ParamsError(f"params.yaml: sample.top_p must be in (0, 1] (got {self.top_p})")
        if not self.repetition_penalty > 0:
            raise ParamsError(f"params.yaml: sample.repetition_penalty must be > 0 (got {self.repetition_penalty})")
        if not (self.prompts or self.chat_prompts or self.prompts_file):
            raise ParamsError("params.yaml: sample needs at least one entry in sample.prompts or sample.chat_prompts, "
                              "or a sample.prompts_file")


@dataclass
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    sft: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def validate(self) -> None:
        self.data.validate()
        self.tokenizer.validate()
        self.tokenize.validate()
        self.model.validate()
        # shape errors surface now, not when training starts (an imported model's shape: by the import stage)
        shape = self.model.resolved(vocab_size=256) if self.model.init != "hf" else None
        for name in ("pretrain", "sft") if shape is not None else ():
            if getattr(self, name).seq_len > shape.max_seq_len:
                raise ParamsError(f"params.yaml: {name}.seq_len ({getattr(self, name).seq_len}) exceeds the model's "
                                  f"max_seq_len ({shape.max_seq_len}); lower it or set model.max_seq_len")
        self.pretrain.validate("pretrain")
        self.sft.validate("sft")
        if self.model.init != "hf":  # what only an imported model makes possible
            if self.pretrain.steps == 0:
                raise ParamsError("params.yaml: pretrain.steps: 0 (import only) needs model.init: hf; set "
                                  "pretrain.steps >= 1 or model.init: hf")
            for key in ("eval.model", "sample.model"):
                if getattr(getattr(self, key.split(".")[0]), "model") == "init":
                    raise ParamsError(f"params.yaml: {key}: init reads the imported model (models/init), but "
                                      f"model.init is not hf; set {key}: pretrain or sft, or model.init: hf")
        self.parallel.validate()
        self.eval.validate()
        self.sample.validate()


# --------------------------------------------------------------------------------------------------------------------
# Loading


def load_params(path: str | Path = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Read params.yaml into typed sections; `overrides` maps dotted keys to values (tests, benchmarks)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run from the repository root (where params.yaml lives)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must be a mapping of sections (data, model, pretrain, ...)")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    params = _build(Params, raw, "")
    params.validate()
    if os.environ.get(TRACE_ENV):
        start_trace(params)
    return params


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: {prefix or 'top level'} must be a mapping (got {type(raw).__name__})")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in NOT_PARAMS or cls is not ModelConfig}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ParamsError(f"params.yaml: unknown key {where}{unknown[0]} (allowed in "
                          f"{prefix or 'the top level'}: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(key, hints[name], value)
    return cls(**kwargs)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(key, opt, value)
            except ParamsError as e:
                errors.append(e)
        names = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
        raise ParamsError(f"params.yaml: {key} must be {names} (got {value!r})")
    if origin is list:
        (item,) = typing.get_args(hint)
        if value is None:
            return []
        if isinstance(value, str):  # a single path or prompt is a list of one
            value = [value]
        if not isinstance(value, list):
            raise ParamsError(f"params.yaml: {key} must be a list (got {value!r})")
        return [_coerce(f"{key}[{i}]", item, v) for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ParamsError(f"params.yaml: {key} must be true or false (got {value!r})")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ParamsError(f"params.yaml: {key} must be an integer (got {value!r})")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ParamsError(f"params.yaml: {key} must be a number (got {value!r})")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ParamsError(f"params.yaml: {key} must be a string (got {value!r})")
    raise AssertionError(f"unsupported type {hint} for {key}")


# --------------------------------------------------------------------------------------------------------------------
# Helpers


def fingerprint(*parts: Any) -> str:
    """A stable hash of config objects / dicts / strings: decides whether a checkpoint belongs to this run."""
    def plain(x):
        return dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x
    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
