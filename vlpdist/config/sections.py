"""Config sections and the root `Config` of every command. One field, one docstring.
Sections that several commands read are in common.py, the study's in study.py, the
synthetic world's in synth.py.

Later stages read only their own section: `data` knows nothing of `model`, and so on.
Cross-section checks (impossible combinations) live in `Config.__post_init__`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from vlpdist.config.common import DataSource, StorageConfig
from vlpdist.config.loader import Invalid, read_with_defaults
from vlpdist.config.study import StudyConfig
from vlpdist.config.synth import SynthConfig
from vlpdist.models.flavors import CAPTION_MAX_LEN, FLAVORS, HEAD_SPLITS, resolve


@dataclass
class CacheConfig:
    enabled: bool = True
    """Copy shards read from object storage to a node-local cache, once per node (local
    shard sets are read in place). Off: every epoch streams from storage again."""
    dir: str | None = None
    """Cache directory on a local disk, shared by every rank and worker of the node;
    default $VLPDIST_CACHE_DIR/shards, else ~/.cache/vlpdist/shards."""
    limit_gb: float = 50.0
    """Size the cache keeps to (it also leaves 1 GiB of the disk free); beyond it, the
    shards needed furthest ahead are evicted, and those that do not fit are streamed."""
    ahead: int = 8
    """Shards of the plan each loader worker fills ahead of its reads."""

    def __post_init__(self):
        if self.limit_gb <= 0:
            raise Invalid("limit_gb", "must be > 0 (turn the cache off with enabled: false)")
        if self.ahead < 0:
            raise Invalid("ahead", "must be >= 0")


@dataclass
class DataConfig:
    sources: list[DataSource] = field(default_factory=list)
    """Shard sets to stream, with mixing weights."""
    task: Literal[
        "pretrain", "vqa", "vizwiz", "snli_ve", "mmimdb", "caption", "answers", "label", "labels"
    ] = "pretrain"
    """What a sample is: one image with a random one of its texts (pretrain), one
    question / hypothesis / plot with its task target, or one caption to learn to write
    (caption: the CCG captioner). Your own task as JSON lines: answers (VQA-style), label
    (one class per text) or labels (several), the kind its shard set was built with."""
    batch_size: int = 32
    """Samples per batch on one rank (the micro-batch)."""
    num_workers: int = 2
    """Loader worker processes per rank (0 = in the training process)."""
    seed: int = 0
    """Seed of shard order, shuffling, mixing, masking and negatives."""
    shuffle_window: int = 4
    """Shards whose samples are shuffled together. A deterministic windowed shuffle rather
    than a streaming buffer: the order must not depend on how ranks and workers split the
    stream, or resuming on another world size could not be exact."""
    read_span: int = 8
    """Consecutive samples of a shard kept together by the shuffle and read as one range:
    a batch mixes batch_size / read_span runs from across the window. Object stores charge
    a request per range; 1 (a shuffle of single samples) mixes best and suits local disks."""
    fraction: float = 1.0
    """Fraction of each source's units kept (the low-resource study: 0.01, 0.05, ...): a seeded
    subset, fixed across epochs, and nested (the 5% subset lies inside the 10% one)."""
    subset_seed: int = 0
    """Seed of the `fraction` subset; separate from `seed` so that runs over several seeds
    train on the same subset."""
    samples_per_epoch: int | None = None
    """Epoch length when mixing sources; default: the sum of the sources' sizes."""
    max_regions: int = 100
    """Regions per image after truncation (detector order: most confident first)."""
    max_text_tokens: int = 36
    """Text tokens per sample including [CLS]/[SEP]."""
    prefetch: int = 2
    """Batches each worker reads ahead."""
    read_threads: int = 8
    """Concurrent range reads per worker (remote storage)."""
    mlm_prob: float = 0.15
    """Masked language modelling: fraction of the eligible text tokens selected."""
    mlm_words: Literal["any", "content"] = "any"
    """Which tokens MLM may select: any (BERT), or whole content words only, i.e. not a stop
    word or punctuation by an English list (objects, attributes, counts, actions). Random
    masking of captions is mostly solved from the text; content words make the model look
    (README, "The science check")."""
    mrm_prob: float = 0.15
    """Masked region modelling: fraction of regions selected."""
    mrm_zero_prob: float = 0.9
    """Selected regions whose features are zeroed (the rest are kept as they are)."""
    itm_prob: float = 0.5
    """Image-text matching: fraction of samples whose text is swapped for another image's.
    Training uses it only when model.objectives include itm (else no text is swapped)."""
    answer_vocab: str | None = None
    """Shard set whose labels.json defines the answer vocabulary; default the first source
    (fine-tuning on val needs the train set's vocabulary)."""
    answer_min_count: int = 9
    """Answers kept in the vocabulary: target answer of at least this many questions."""
    on_corrupt: Literal["skip", "fail"] = "skip"
    """What a corrupt or truncated shard does: skipped with a warning, or stops the run."""
    verify_sha256: bool = False
    """Check each shard's sha256 (reads every shard once, before the first epoch)."""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """The node-local shard cache for sources on object storage."""
    text_only: bool = False
    """Give the model no regions (one empty, masked slot per sample): the text-only control
    of a study, the question-, hypothesis- or plot-only model trained like the others."""

    def __post_init__(self):
        for name in ("batch_size", "max_regions", "max_text_tokens", "shuffle_window", "read_span",
                     "prefetch", "read_threads"):  # fmt: skip
            if getattr(self, name) < 1:
                raise Invalid(name, "must be >= 1")
        if self.num_workers < 0:
            raise Invalid("num_workers", "must be >= 0")
        for name in ("mlm_prob", "mrm_prob", "mrm_zero_prob", "itm_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise Invalid(name, "must be in [0, 1]")
        if not 0 < self.fraction <= 1:
            raise Invalid("fraction", f"must be in (0, 1], got {self.fraction}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise Invalid("samples_per_epoch", "must be >= 1")


# Size field types of vlpdist.models.flavors: how a `model.sizes` value is checked.
SIZE_TYPES = {
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an int >= 1"),
    float: (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v >= 0,
        "a number >= 0",
    ),
    tuple[int, ...]: (
        lambda v: (
            isinstance(v, list | tuple)
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)
        ),
        "a list of ints >= 0",
    ),
}


@dataclass
class ModelConfig:
    arch: Literal["visual_bert", "vilbert"] = "visual_bert"
    """Architecture."""
    flavor: Literal["tiny", "small", "base"] = "tiny"
    """Named size (vlpdist/models/flavors.py): tiny for CPU tests, base for the paper's."""
    sizes: dict[str, int | float | list[int]] = field(default_factory=dict)
    """Single numbers of the flavor overridden, e.g. {num_layers: 6, hidden_size: 384}."""
    freeze_base: bool = False
    """Train only the head (the paper's frozen-base transfer)."""
    text_init: str | None = None
    """HF BERT checkpoint directory (or hub name) for the text stream; None = random."""
    objectives: list[Literal["mlm", "mrc", "mfr", "itm"]] = field(
        default_factory=lambda: ["mlm", "mrc"]
    )
    """Pretraining losses: masked language, region class (KL), feature regression, matching."""

    def __post_init__(self):
        if not self.objectives:
            raise Invalid("objectives", "at least one objective is needed")
        # the sizes are those of the arch's size dataclass, with its types: a misspelt or
        # mistyped size is this line, not a crash of every rank when the model is built
        hints = typing.get_type_hints(type(FLAVORS[self.arch][self.flavor]))
        for name, value in self.sizes.items():
            if name not in hints:
                raise Invalid(
                    f"sizes.{name}",
                    f"not a size of {self.arch} (its sizes: {', '.join(hints)})",
                    others=("arch",),
                )
            expected = SIZE_TYPES[hints[name]]
            if not expected[0](value):
                raise Invalid(f"sizes.{name}", f"expected {expected[1]}, got {value!r}")
        size = self.size()
        for width, heads in HEAD_SPLITS:
            w, h = getattr(size, width, None), getattr(size, heads, None)
            if w is not None and w % h:
                raise Invalid(
                    f"sizes.{width}",
                    f"{w} is not a multiple of {heads} {h} in {self.arch}/{self.flavor}",
                    others=(f"sizes.{heads}", "flavor", "arch"),
                )

    def size(self):
        """The model's size dataclass: the flavor's with `sizes` applied."""
        return resolve(self.arch, self.flavor, self.sizes)


@dataclass
class OptimConfig:
    lr: float = 5e-5
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.01
    """Decoupled weight decay; never applied to biases and LayerNorm."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 1000
    """Linear warmup updates."""
    total_steps: int = 11000
    """Total updates; the schedule decays linearly to zero here."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 disables."""

    def __post_init__(self):
        if self.lr <= 0:
            raise Invalid("lr", "must be > 0")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise Invalid(name, "must be >= 0")
        if self.eps <= 0:
            raise Invalid("eps", "must be > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise Invalid("betas", "need two values in [0, 1)")
        if self.total_steps < 1:
            raise Invalid("total_steps", "must be >= 1")
        if self.warmup_steps < 0:
            raise Invalid("warmup_steps", "must be >= 0")
        if self.warmup_steps > self.total_steps:
            raise Invalid(
                "warmup_steps",
                f"{self.warmup_steps} > total_steps {self.total_steps}",
                others=("total_steps",),
            )


@dataclass
class DeepSpeedConfig:
    zero_stage: Literal[0, 1, 2, 3] = 0
    """ZeRO partitioning stage."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Training precision."""
    global_batch_size: int = 32
    """Samples per update over all ranks = micro-batch x accumulation x world size."""
    offload_optimizer: bool = False
    """ZeRO-Offload of optimizer state to CPU (stage >= 1)."""

    def __post_init__(self):
        if self.global_batch_size < 1:
            raise Invalid("global_batch_size", "must be >= 1")
        if self.offload_optimizer and self.zero_stage == 0:
            raise Invalid(
                "offload_optimizer", "needs deepspeed.zero_stage >= 1", others=("zero_stage",)
            )


@dataclass
class RunConfig:
    name: str = "run"
    """Run name; the run's directory is <output>/<name>."""
    output: str = "./out"
    """Storage URL under which runs write checkpoints, exports and results."""
    seed: int = 0
    """Seed of model init and everything not seeded by `data.seed`."""
    checkpoint_every: int = 1000
    """Updates between checkpoints; 0 disables."""
    keep_last: int = 2
    """Complete checkpoints kept."""
    log_every: int = 10
    """Updates between log lines."""
    init_from: str | None = None
    """Export directory to start from (fine-tuning)."""
    results: str | None = None
    """Storage URL of a directory for the run's JSON result record (<results>/<name>.json,
    what a study collects); default <output>/<name>/result.json."""
    peak_tflops: float | None = None
    """The device's peak TFLOP/s in the run's precision, for MFU; default: looked up from the
    GPU's name (H100, H200, A100, L4); MFU is left out on CPU."""
    trace: str | None = None
    """Local directory where each rank appends the sample keys of every micro-batch
    (rank<r>.jsonl): a debugging aid that shows a resumed run consumed exactly the rest."""

    def __post_init__(self):
        if self.checkpoint_every < 0:
            raise Invalid("checkpoint_every", "must be >= 0 (0 disables)")
        for name in ("keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise Invalid(name, "must be >= 1")
        if not self.name or "/" in self.name:
            raise Invalid("name", f"must be a non-empty name without '/', got {self.name!r}")


@dataclass
class EvalConfig:
    sources: list[DataSource] = field(default_factory=list)
    """Validation shard sets of the downstream task (fine-tuning evaluates on them with the
    task's metric and keeps the best checkpoint)."""
    every: int = 0
    """Updates between evaluations; 0 = only at the end of training."""
    batch_size: int | None = None
    """Samples per evaluation batch on one rank; default data.batch_size."""

    def __post_init__(self):
        if self.every < 0:
            raise Invalid("every", "must be >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise Invalid("batch_size", "must be >= 1")


@dataclass
class CaptionConfig:
    """`vlpdist shards caption`: the captioner's output (its training is data/model/optim)."""

    images: str | None = None
    """Shard set whose images get generated captions (e.g. the downstream task's images)."""
    out: str | None = None
    """URL of the new shard set (CCG: generated in-domain captions)."""
    name: str = "ccg"
    """The new set's dataset name."""
    beam_size: int = 3
    """Beam search width; 1 = greedy decoding."""
    max_len: int = 20
    """Most tokens per generated caption."""
    batch_size: int = 32
    """Images decoded at once."""
    overwrite: bool = False
    """Replace an existing shard set at `out`."""

    def __post_init__(self):
        for name in ("beam_size", "max_len", "batch_size"):
            if getattr(self, name) < 1:
                raise Invalid(name, "must be >= 1")
        if self.max_len > CAPTION_MAX_LEN:
            raise Invalid("max_len", f"must be <= {CAPTION_MAX_LEN} (the decoder's positions)")


# What each command reads of a `Config`: sections, or single keys of a section. Anything
# else that a file, an include or an override sets is an error (loader._check_read), and
# `vlpdist config show` prints only this part.
TRAINING = ("storage", "data", "model", "optim", "deepspeed", "run")
COMMANDS: dict[str, tuple[str, ...]] = {
    "pretrain": TRAINING,  # vlpdist pretrain: no evaluation (eval is fine-tuning's)
    "finetune": (*TRAINING, "eval"),  # vlpdist finetune
    "caption": (*TRAINING, "caption"),  # vlpdist shards caption: trains, then captions
    # vlpdist study, study status, report: each run is built from the study's base configs
    # (their own data, model, ...); the study puts them under run.output with its storage
    "study": ("storage", "run.output", "study"),
    "synth": ("storage", "synth"),  # vlpdist shards synth, vlpdist demo (its first step)
}

# A file's command when none is named (`vlpdist config show`): the first of these sections
# that it sets (with its includes); a file with none of them is a pretraining config.
COMMAND_OF_SECTION = (
    ("study", "study"),
    ("synth", "synth"),
    ("caption", "caption"),
    ("eval", "finetune"),
)


def command_of(path: str) -> str:
    """The command that reads the config file at `path`, from the sections it sets."""
    tree = read_with_defaults(path, {})
    return next((cmd for section, cmd in COMMAND_OF_SECTION if section in tree), "pretrain")


# Tasks whose text goes to a decoder rather than to the encoder (which then sees [CLS]
# alone), with the decoder's positions; every other task's text takes encoder positions.
DECODER_POSITIONS = {"caption": CAPTION_MAX_LEN}


@dataclass
class Config:
    """Root of every training, study and synthetic-world config file; `COMMANDS` says
    which part each command reads."""

    COMMANDS: ClassVar[dict[str, tuple[str, ...]]] = COMMANDS

    storage: StorageConfig = field(default_factory=StorageConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)

    def __post_init__(self):
        ds, data = self.deepspeed, self.data
        if ds.global_batch_size % data.batch_size:
            raise Invalid(
                "deepspeed.global_batch_size",
                f"{ds.global_batch_size} is not a multiple of data.batch_size {data.batch_size}",
                others=("data.batch_size",),
            )
        if self.run.init_from and self.model.text_init:
            raise Invalid(
                "model.text_init",
                "set together with run.init_from; the export already holds the text weights",
                others=("run.init_from",),
            )
        self._check_text_positions()

    def _check_text_positions(self):
        """The text fits the position table it goes to. From an export (run.init_from), the
        export's sizes rule, not model.sizes: the preflight checks those."""
        m, n = self.model, self.data.max_text_tokens
        decoder = DECODER_POSITIONS.get(self.data.task)
        if decoder is not None:
            if n - 1 > decoder:  # teacher forcing reads the caption but for its last token
                raise Invalid(
                    "data.max_text_tokens",
                    f"{n}: a {self.data.task} decoder reads {n - 1} tokens, it has {decoder} "
                    "positions",
                    others=("data.task",),
                )
        elif not self.run.init_from and n > m.size().max_position:
            raise Invalid(
                "data.max_text_tokens",
                f"{n} > model.sizes.max_position {m.size().max_position} of the "
                f"{m.arch}/{m.flavor} model",
                others=("model.sizes.max_position", "model.flavor", "model.arch"),
            )
