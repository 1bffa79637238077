"""The `study:` section (`vlpdist study`): the grid, its tasks and the resources per run."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from vlpdist.config.common import DataSource
from vlpdist.config.loader import Invalid

# What a study task may be fine-tuned as: the built-in tasks, and your own task given as
# JSON lines by the kind its shard set was built with (shards/sources/jsonl.py).
TaskKind = Literal["vqa", "vizwiz", "snli_ve", "mmimdb", "answers", "label", "labels"]


@dataclass
class StudyTask:
    train: list[DataSource] = field(default_factory=list)
    """The downstream task's train split (shard sets)."""
    val: list[DataSource] = field(default_factory=list)
    """Its val split, scored with the task's metric."""
    task: TaskKind | None = None
    """The task kind; default: the entry's name in study.tasks. Your own task (JSON lines)
    is an entry of any name with the kind its shards were built as: answers, label, labels."""

    def __post_init__(self):
        for name in ("train", "val"):
            if not getattr(self, name):
                raise Invalid(name, "a study task needs train and val shard sets")


@dataclass
class StudyResources:
    workers: int = 1
    """Ray Train workers (DeepSpeed ranks) per run."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker."""
    gpus_per_worker: float = 0.0
    """GPUs per worker (0 = CPU training, gloo)."""
    zero_stage: Literal[0, 1, 2, 3] | None = None
    """ZeRO stage of these runs; default: the base config's."""

    def __post_init__(self):
        if self.workers < 1:
            raise Invalid("workers", "must be >= 1")
        for name in ("cpus_per_worker", "gpus_per_worker"):
            if getattr(self, name) < 0:
                raise Invalid(name, "must be >= 0")


@dataclass
class StudyConfig:
    name: str = "study"
    """Study name; everything goes under <run.output>/<name>/ (runs/, results/)."""
    shards: str | None = None
    """Root URL put in front of relative shard URLs in pretrain_sets and tasks, so that one
    study file serves a laptop (demo_out/shards) and a bucket (s3://bucket/demo/shards)."""
    pretrain_config: str = "configs/pretrain/tiny.yaml"
    """Base config of every pretraining run (a path, relative to the working directory)."""
    finetune_config: str = "configs/finetune/tiny.yaml"
    """Base config of every fine-tuning run."""
    pretrain_overrides: list[str] = field(default_factory=list)
    """key=value overrides applied to every pretraining run."""
    finetune_overrides: list[str] = field(default_factory=list)
    """key=value overrides applied to every fine-tuning run."""
    architectures: list[Literal["visual_bert", "vilbert"]] = field(
        default_factory=lambda: ["visual_bert"]
    )
    """Architectures of the grid."""
    pretrain_sets: dict[str, list[DataSource]] = field(default_factory=dict)
    """Named pretraining shard sets or mixes (several sources with weights)."""
    pretrain_fractions: list[float] = field(default_factory=lambda: [1.0])
    """Fractions of each pretraining set (data size ablation)."""
    scratch: bool = True
    """Also fine-tune from random weights: the baseline of every table."""
    grounding: list[DataSource] = field(default_factory=list)
    """Caption shard set that every pretraining export is probed on (`vlpdist analyze
    grounding`: masked words by kind, true vs shuffled regions); images unseen in
    pretraining, and one set for all, so the sets compare. Empty: no probe."""
    controls: bool = True
    """Also fine-tune the text-only control (from random weights, no regions) for every
    architecture, task, mode, fraction and seed; every fine-tuning run is scored with shuffled
    regions too. Together they say whether a difference is visio-linguistic."""
    tasks: dict[str, StudyTask] = field(default_factory=dict)
    """Downstream tasks fine-tuned from every export, by name."""
    modes: list[Literal["full", "frozen"]] = field(default_factory=lambda: ["full"])
    """Fine-tuning modes: the whole model, or the head on a frozen base."""
    train_fractions: list[float] = field(default_factory=lambda: [1.0])
    """Fractions of the downstream train split (low-resource study)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Fine-tuning seeds."""
    pretrain_resources: StudyResources = field(default_factory=StudyResources)
    """Workers and devices of each pretraining run."""
    finetune_resources: StudyResources = field(default_factory=StudyResources)
    """Workers and devices of each fine-tuning run."""
    max_failures: int = 2
    """Times Ray Train restarts a run's workers after a crash (each restart resumes from the
    last complete checkpoint); then the run is recorded as failed."""

    def __post_init__(self):
        for name in ("train_fractions", "pretrain_fractions"):
            if any(not 0 < f <= 1 for f in getattr(self, name)):
                raise Invalid(name, "each fraction must be in (0, 1]")
        if self.max_failures < 0:
            raise Invalid("max_failures", "must be >= 0")
        for reserved in ("scratch", "text-only"):  # the baselines' names in every table
            if reserved in self.pretrain_sets:
                raise Invalid("pretrain_sets", f"{reserved!r} is a baseline's name")
        for field_name in ("pretrain_sets", "tasks"):  # both name run directories
            for name in getattr(self, field_name):
                if not name or not all(c.isalnum() or c in "_-" for c in name):
                    raise Invalid(field_name, f"name {name!r}: letters, digits, _ and -")
        kinds = typing.get_args(TaskKind)
        for name, t in self.tasks.items():
            if t.task is None and name not in kinds:
                raise Invalid(
                    "tasks",
                    f"{name!r} is not a built-in task: give its kind, task: " + " | ".join(kinds),
                )
