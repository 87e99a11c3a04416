"""The one reader of params.yaml: typed sections, model presets and validation.

Every other module receives these dataclasses; nothing else parses YAML. A wrong key, type or value fails here,
before any work, with a message that names the key and what it accepts. `base` holds what every section shares,
`model` the model section with its presets and accounting, `params` the other sections and the loader.
"""

from llm_core.config.base import TRACE_ENV, ParamsError
from llm_core.config.model import (ATTENTION_TYPES, FFN_TYPES, PRESETS, SCORE_FUNCS, LayerConfig, ModelConfig)
from llm_core.config.params import (PARAMS_FILE, DataConfig, EvalConfig, ParallelConfig, Params, SampleConfig,
                                    SourceConfig, TextEvalConfig, TokenizeConfig, TokenizerConfig, TrainConfig,
                                    fingerprint, load_params)

__all__ = ["ATTENTION_TYPES", "FFN_TYPES", "PARAMS_FILE", "PRESETS", "SCORE_FUNCS", "TRACE_ENV", "DataConfig",
           "EvalConfig", "LayerConfig", "ModelConfig", "ParallelConfig", "Params", "ParamsError", "SampleConfig",
           "SourceConfig", "TextEvalConfig", "TokenizeConfig", "TokenizerConfig", "TrainConfig", "fingerprint",
           "load_params"]
