"""Typed configs: `load(Config, path, overrides)`; see loader.py for the precedence."""

from vlpdist.config.loader import (
    SECRET,
    Invalid,
    dump_yaml,
    from_dict,
    load,
    to_dict,
)
from vlpdist.config.recipe import Recipe, ShardsConfig
from vlpdist.config.sections import (
    CaptionConfig,
    Config,
    DataConfig,
    DataSource,
    DeepSpeedConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    RetryConfig,
    RunConfig,
    StorageConfig,
    StudyConfig,
    StudyResources,
    StudyTask,
)
from vlpdist.config.synth import DomainConfig, SynthConfig

__all__ = [
    "SECRET",
    "Config",
    "DataConfig",
    "DataSource",
    "DeepSpeedConfig",
    "DomainConfig",
    "Invalid",
    "ModelConfig",
    "OptimConfig",
    "Recipe",
    "RetryConfig",
    "CaptionConfig",
    "EvalConfig",
    "RunConfig",
    "ShardsConfig",
    "StorageConfig",
    "StudyConfig",
    "StudyResources",
    "StudyTask",
    "SynthConfig",
    "dump_yaml",
    "from_dict",
    "load",
    "to_dict",
]
