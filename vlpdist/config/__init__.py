"""Typed configs: `load(Config, path, overrides, command=...)`; see loader.py for the
precedence and sections.py for what each command reads (`COMMANDS`)."""

from vlpdist.config.common import DataSource, RetryConfig, StorageConfig
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
    COMMANDS,
    CacheConfig,
    CaptionConfig,
    Config,
    DataConfig,
    DeepSpeedConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    command_of,
)
from vlpdist.config.study import StudyConfig, StudyResources, StudyTask
from vlpdist.config.synth import DomainConfig, SynthConfig

__all__ = [
    "COMMANDS",
    "SECRET",
    "CacheConfig",
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
    "command_of",
    "dump_yaml",
    "from_dict",
    "load",
    "to_dict",
]
