"""A study's grid as plain data: which runs, with which config, depending on which export.

Pretraining runs = architecture x pretraining set (or mix) x data fraction. Fine-tuning runs
= (each pretraining run's export, plus scratch) x task x mode x train fraction x seed. Each
run is a complete `Config` built from the study's base configs and overrides, so a run of a
study is the same thing as `vlpdist pretrain` / `vlpdist finetune` with that config.
No Ray here: the runner schedules what this module plans.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from vlpdist.config import Config, DataSource, load
from vlpdist.config.study import StudyResources
from vlpdist.storage import is_local, join

SCRATCH = "scratch"
TEXT_ONLY = "text-only"  # the control without regions: fine-tuned from scratch on text alone


@dataclass
class RunSpec:
    name: str
    kind: str  # "pretrain" | "finetune"
    cfg: Config
    resources: StudyResources
    depends: str | None = None  # the pretraining run whose export this run starts from
    labels: dict = dataclasses.field(default_factory=dict)  # grid coordinates, for reports
    probe: str | None = None  # a pretraining run's: the caption set its grounding is read on

    @property
    def url(self) -> str:
        """The run's directory: checkpoints, exports, its lease and its own record."""
        return join(self.cfg.run.output, self.name)


def _absolute(url: str) -> str:
    """Relative local paths are the driver's: Ray workers run in other directories."""
    return os.path.abspath(url) if is_local(url) and not url.startswith("file:") else url


def study_root(cfg: Config) -> str:
    return join(_absolute(cfg.run.output), cfg.study.name)


def _frac(f: float) -> str:
    return f"{f * 100:g}pct"


def _sources(root: str | None, sources: list[DataSource]) -> str:
    """YAML (JSON) for a `data.sources=` override; relative URLs are put under `root`."""

    def url(u: str) -> str:
        relative = root and is_local(u) and not u.startswith(("/", "file:", "."))
        return _absolute(join(root, u) if relative else u)

    return json.dumps([{"url": url(s.url), "weight": s.weight} for s in sources])


def _resources(res: StudyResources) -> list[str]:
    return [] if res.zero_stage is None else [f"deepspeed.zero_stage={res.zero_stage}"]


def plan(cfg: Config) -> list[RunSpec]:
    """Every run of the study, pretraining runs first, in a stable order."""
    s, root = cfg.study, study_root(cfg)
    # each run writes its own record into its run directory; the driver, the only writer
    # of <study>/results/, adds the study's labels there (results.py)
    common = [f"run.output={join(root, 'runs')}"]
    runs: list[RunSpec] = []
    probe = json.loads(_sources(s.shards, s.grounding))[0]["url"] if s.grounding else None
    # (export name, pretraining run, labels, overrides of its fine-tuning runs)
    exports: list[tuple[str, str | None, dict, list[str]]] = []
    for arch in s.architectures:
        for name, on, extra in ((SCRATCH, s.scratch, []),
                                (TEXT_ONLY, s.controls, ["data.text_only=true"])):  # fmt: skip
            if on:
                exports.append((name, None, {"arch": arch, "pretrain": name,
                                             "pretrain_fraction": 0.0}, extra))  # fmt: skip
        for set_name, sources in s.pretrain_sets.items():
            for frac in s.pretrain_fractions:
                name = f"pre-{arch}-{set_name}" + ("" if frac == 1 else f"-{_frac(frac)}")
                labels = {"arch": arch, "pretrain": set_name, "pretrain_fraction": frac}
                overrides = [*s.pretrain_overrides, *common, *_resources(s.pretrain_resources),
                             f"model.arch={arch}", f"data.sources={_sources(s.shards, sources)}",
                             f"data.fraction={frac}", f"run.name={name}"]  # fmt: skip
                run_cfg = _build(cfg, s.pretrain_config, overrides, "pretrain")
                runs.append(RunSpec(name, "pretrain", run_cfg, s.pretrain_resources, None, labels,
                                    probe))  # fmt: skip
                exports.append((set_name, name, labels, []))
    for set_name, pre, labels, extra in exports:
        arch = labels["arch"]
        for task_name, t in s.tasks.items():
            for mode in s.modes:
                for frac in s.train_fractions:
                    for seed in s.seeds:
                        tag = set_name if pre is None or labels["pretrain_fraction"] == 1 else (
                            f"{set_name}-{_frac(labels['pretrain_fraction'])}"
                        )  # fmt: skip
                        name = f"ft-{arch}-{tag}-{task_name}-{mode}-{_frac(frac)}-s{seed}"
                        init = join(root, "runs", pre, "export") if pre else "null"
                        overrides = [*s.finetune_overrides, *common,
                                     *_resources(s.finetune_resources), f"model.arch={arch}",
                                     f"data.task={t.task or task_name}",
                                     f"data.sources={_sources(s.shards, t.train)}",
                                     f"eval.sources={_sources(s.shards, t.val)}",
                                     f"data.fraction={frac}", f"run.seed={seed}",
                                     f"data.seed={seed}", f"run.init_from={init}",
                                     f"model.freeze_base={str(mode == 'frozen').lower()}",
                                     *extra, f"run.name={name}"]  # fmt: skip
                        run_cfg = _build(cfg, s.finetune_config, overrides, "finetune")
                        run_labels = {**labels, "task": task_name, "mode": mode,
                                      "train_fraction": frac, "seed": seed}  # fmt: skip
                        runs.append(RunSpec(name, "finetune", run_cfg, s.finetune_resources, pre,
                                            run_labels))  # fmt: skip
    return runs


def _build(study_cfg: Config, base: str, overrides: list[str], command: str) -> Config:
    """A run's config: the base file, the study's overrides, then the study's storage (the
    study decides where everything lives and with which credentials)."""
    cfg = load(Config, base, overrides, command=command)
    return dataclasses.replace(cfg, storage=study_cfg.storage)
