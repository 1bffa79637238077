"""A shard build recipe (`vlpdist shards build RECIPE`): which public files, which source."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlpdist.config.common import StorageConfig
from vlpdist.config.loader import Invalid


@dataclass
class ShardsConfig:
    target_shard_mb: float = 256.0
    """A shard is closed once it reaches this size (MB, 10^6 bytes)."""
    tokenizer: str = ""
    """HF tokenizer directory (or hub name) whose ids are stored with every text."""
    max_text_tokens: int = 128
    """Token ids kept per text (the text itself is kept whole; truncations are counted)."""
    progress: bool = True
    """Show a progress bar with samples and MB/s."""

    def __post_init__(self):
        if self.target_shard_mb <= 0:
            raise Invalid("target_shard_mb", "must be > 0")
        if self.max_text_tokens < 1:
            raise Invalid("max_text_tokens", "must be >= 1")


@dataclass
class Recipe:
    source: str = ""
    """Source builder name, e.g. coco, vqa2, cc, ccg, vizwiz, snli_ve, mmimdb, jsonl."""
    dataset: str = ""
    """Dataset name recorded in the manifest (e.g. coco_10pct)."""
    root: str = "."
    """Directory of the public files; '{root}' in inputs expands to it."""
    split: str = "train"
    """Split to build; '{split}' in inputs expands to it."""
    inputs: dict[str, str | None] = field(default_factory=dict)
    """The public files the source reads, by role (see shards/README.md). null leaves an
    input out, as not naming it does (`inputs.annotations=null` on the command line drops
    the recipe's file); only an optional input may be left out."""
    options: dict[str, object] = field(default_factory=dict)
    """Source-specific options (subset fraction, seed, ...); unknown ones are errors."""
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    """Shard writing settings."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Where --out is written."""

    def __post_init__(self):
        if not self.source:
            raise Invalid("source", "a recipe must name its source")
        for role, path in self.inputs.items():
            # an empty path would name the working directory and fail far from its key
            if path is not None and not path.strip():
                raise Invalid(f"inputs.{role}", "empty path (null leaves an optional input out)")
