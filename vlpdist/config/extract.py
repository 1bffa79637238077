"""An extraction config (`vlpdist shards extract CONFIG --out URL images=...`): which
extractor with which settings and weights, and how the work is spread over Ray."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlpdist.config.common import StorageConfig
from vlpdist.config.loader import Invalid


@dataclass
class ExtractConfig:
    extractor: str = "grid"
    """An extractor of vlpdist (grid, detector) or `package.module:Name` of your own."""
    options: dict[str, object] = field(default_factory=dict)
    """The extractor's settings (input size, grid, backbone stages, box limits...);
    unknown ones are errors. Every setting is recorded in the manifest."""
    weights: str | None = None
    """A local weights file or directory (safetensors, or a torch state dict), or
    `hf:REPO[@REVISION]`, a transformers checkpoint on the Hugging Face hub (e.g.
    hf:microsoft/resnet-50 for `grid`), read from the local Hugging Face cache or downloaded
    into it; null: a seeded random init, recorded as "random init" in the manifest."""
    seed: int = 0
    """Seed of the random init (when weights is null)."""
    images: str = ""
    """The images: a directory, a glob, or a tar (or glob of tars), on any storage URL."""
    dataset: str = ""
    """Dataset name recorded in the manifest; default: the last part of --out."""
    batch_size: int = 8
    """Images per forward of a model actor (padded to this size, so features do not
    depend on which images share a batch)."""
    actors: int = 1
    """Model actors: one per GPU on a cluster, or slices of the CPUs on a laptop."""
    gpus_per_actor: float = 0.0
    """GPUs each model actor takes (1 on a GPU cluster)."""
    cpus_per_actor: float = 1.0
    """CPUs each model actor reserves on Ray (decoding needs some left over)."""
    threads_per_actor: int = 0
    """torch threads of each model actor; 0: its node's cores shared among the actors
    (decoding is light next to the model, so the actors may use the cores it leaves)."""
    images_per_shard: int = 256
    """Images per shard. Fixed, so a rerun after a crash knows which shards are done."""
    max_pixels: int = 89_478_485
    """Images with more pixels are skipped as decompression bombs (PIL's default limit)."""
    progress: bool = True
    """Show a progress bar with images/s."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Where the images are read and --out is written."""

    def __post_init__(self):
        for key in ("batch_size", "actors", "images_per_shard", "max_pixels"):
            if getattr(self, key) < 1:
                raise Invalid(key, "must be >= 1")
        if self.threads_per_actor < 0:
            raise Invalid("threads_per_actor", "must be >= 0 (0: the node's cores / actors)")
        if self.gpus_per_actor < 0 or self.cpus_per_actor <= 0:
            raise Invalid("cpus_per_actor", "must be > 0 (and gpus_per_actor >= 0)")
