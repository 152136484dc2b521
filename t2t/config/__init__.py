"""Typed configuration for every t2t job: the schema (`schema`) and the loader (`load`). See
`t2t config --explain [section]`."""

from t2t.config.load import field_docs, from_dict, load_config, to_dict, validate
from t2t.config.schema import (PROMPT_EOL, Config, DataConfig, EvalConfig, LayoutConfig, LoraConfig, ModelConfig,
                               StageConfig, TargetsConfig, TinyModelConfig, TrainConfig, text2token_stages)
from t2t.errors import ConfigError
from t2t.targets.kinds import DataDrivenTargets, ModelDerivedTargets, TargetsSpec

__all__ = ["Config", "ConfigError", "DataConfig", "DataDrivenTargets", "EvalConfig", "LayoutConfig", "LoraConfig",
           "ModelConfig", "ModelDerivedTargets", "PROMPT_EOL", "StageConfig", "TargetsConfig", "TargetsSpec",
           "TinyModelConfig", "TrainConfig", "field_docs", "from_dict", "load_config", "text2token_stages", "to_dict",
           "validate"]
