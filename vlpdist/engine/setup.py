"""What a run settles before any process group or model exists: the DeepSpeed config from
ours, and the checks that turn a bad config, a bad `init_from`, a checkpoint of another
model or storage that cannot be written into one line, within a second or two of starting
(the CLI runs them before importing the heavy half of the engine)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import yaml

from vlpdist.config import Config, dump_yaml
from vlpdist.config.sections import DECODER_POSITIONS
from vlpdist.data.tasks import TASKS as DATA_TASKS
from vlpdist.engine import checkpoint
from vlpdist.errors import VlpdistError
from vlpdist.shards.reader import load_manifest
from vlpdist.storage import Storage, join

# What a pretraining objective needs in every training set's manifest, and what it is.
OBJECTIVE_NEEDS = {"mrc": ("cls_prob_dim", "region classification: KL to the detector's cls_prob")}


@dataclass(frozen=True)
class EngineTask:
    """What a task is to the engine (its data and its model have tables of their own:
    vlpdist.data.tasks, vlpdist.models.tasks)."""

    command: str
    """The command that trains it: `vlpdist pretrain`, `vlpdist finetune`, `shards caption`."""
    tuned: bool
    """Fine-tuned: scored on eval.sources with its metric (vlpdist.metrics), its best
    checkpoint kept at <run>/best/; else exported once, at the end, to <run>/export/."""


_FINETUNE = EngineTask("finetune", tuned=True)
TASKS = {
    "pretrain": EngineTask("pretrain", tuned=False),
    "caption": EngineTask("caption", tuned=False),
    "vqa": _FINETUNE,
    "vizwiz": _FINETUNE,
    "snli_ve": _FINETUNE,
    "mmimdb": _FINETUNE,
    "answers": _FINETUNE,  # your own task as JSON lines (shards/sources/jsonl.py)
    "label": _FINETUNE,
    "labels": _FINETUNE,
}
_TUNED = [t for t, row in TASKS.items() if row.tuned]
# What to say when a command is given a task it does not train.
_NOT_THIS_TASK = {
    "pretrain": "data.task is {task!r}: pretraining streams task 'pretrain'; use `vlpdist "
    "finetune` for downstream tasks",
    "finetune": f"data.task: name the downstream task ({', '.join(_TUNED)})",
    "caption": "data.task is {task!r}: a captioner trains on task 'caption'",
}


@dataclass
class Preflight:
    storage: Storage
    run_url: str


def deepspeed_config(cfg: Config, world: int) -> dict:
    """DeepSpeed's config from ours; the global batch is kept when the world size changes
    (micro-batch x accumulation x world), or the run refuses."""
    micro, total = cfg.data.batch_size, cfg.deepspeed.global_batch_size
    if total % (micro * world):
        raise VlpdistError(
            f"deepspeed.global_batch_size {total} is not data.batch_size {micro} x {world} ranks "
            "x a whole number of accumulation steps; change one of them"
        )
    ds = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": total // (micro * world),
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "steps_per_print": 10**9,  # our own logging
        "wall_clock_breakdown": False,
    }
    if cfg.deepspeed.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif cfg.deepspeed.precision == "fp16":
        ds["fp16"] = {"enabled": True, "initial_scale_power": 16}
    if cfg.deepspeed.offload_optimizer:
        ds["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    return ds


def check_command(cfg: Config, command: str) -> None:
    """A config given to the command that does not train its task is one line (the
    engine itself trains whatever data.task says)."""
    task = cfg.data.task
    if TASKS[task].command != command:
        raise VlpdistError(_NOT_THIS_TASK[command].format(task=task))


def preflight(cfg: Config) -> Preflight:
    """Every check that needs no process group; safe to repeat on every rank."""
    if TASKS[cfg.data.task].tuned and not cfg.eval.sources:
        raise VlpdistError("eval.sources: fine-tuning evaluates on the val split; name its shards")
    deepspeed_config(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    storage = Storage(cfg.storage)
    run_url = join(cfg.run.output, cfg.run.name)
    if os.environ.get("RANK", "0") == "0":  # unwritable storage fails now, not at a checkpoint
        probe = join(run_url, ".write-probe")
        storage.write_text(probe, "ok")
        storage.rm(probe)
    if not cfg.data.sources:
        raise VlpdistError("data.sources: no shard set to train on")
    first = _check_sources(storage, cfg)
    if cfg.run.init_from:
        _check_export(storage, cfg, first)
    latest = (checkpoint.committed(storage, run_url) or [(0, None)])[-1][1]
    if latest:
        checkpoint.check_same_model(storage, latest, yaml.safe_load(dump_yaml(cfg, redact=True)))
    # which checkpoint to resume from is the lease's business, decided when the run starts
    return Preflight(storage, run_url)


def _check_sources(storage: Storage, cfg: Config) -> dict:
    """Every shard set's manifest fits the first training set's (the model is built for that
    one) and has what the objectives need; returns the first manifest. Each mismatch would
    otherwise crash every rank after the process group starts (or, for a set without cls_prob
    under mrc, train against all-zero targets)."""
    first: dict = {}
    pretraining = DATA_TASKS[cfg.data.task].objectives  # the only batches with cls_prob
    needs = [(o, *OBJECTIVE_NEEDS[o]) for o in cfg.model.objectives if o in OBJECTIVE_NEEDS]
    for key, sources in (("data.sources", cfg.data.sources), ("eval.sources", cfg.eval.sources)):
        for src in sources:
            if not storage.exists(join(src.url, "index.json")):
                raise VlpdistError(f"{key}: {src.url}: no shard set there (no index.json)")
            m = load_manifest(storage, src.url)
            m["tokenizer_sha256"] = (m.get("tokenizer") or {}).get("sha256")
            first = first or {**m, "url": src.url}
            agree = ["feature_dim", "tokenizer_sha256"]
            both_cls = m.get("cls_prob_dim") and first.get("cls_prob_dim")
            if pretraining and key == "data.sources" and both_cls:
                agree.append("cls_prob_dim")  # collation copies every set's into one array
            differs = [w for w in agree if m.get(w) != first.get(w)]
            if differs:
                raise VlpdistError(
                    f"{key}: {src.url}: its {differs[0]} differs from that of {first['url']} "
                    "(the first of data.sources, which the model is built for)"
                )
            for objective, field, what in needs if pretraining and key == "data.sources" else ():
                if not m.get(field):
                    raise VlpdistError(
                        f"model.objectives: {objective} ({what}) needs {field} in every training "
                        f"set; {key} {src.url} has none in its index.json: drop {objective} from "
                        "model.objectives or train on a set with detector classes"
                    )
    return first


def _check_export(storage: Storage, cfg: Config, first: dict) -> None:
    url = cfg.run.init_from
    if not storage.exists(join(url, "config.json")):
        raise VlpdistError(
            f"run.init_from {url}: no export there (no config.json); point it at a "
            "pretraining run's export/ directory"
        )
    if not storage.exists(join(url, checkpoint.COMMIT)):
        raise VlpdistError(
            f"run.init_from {url}: incomplete export (no {checkpoint.COMMIT} marker: its "
            "pretraining run has not finished, or the copy was cut short)"
        )
    # the export's sizes and dims rule over model.sizes (config.json of models/export.py)
    exported = json.loads(storage.read_text(join(url, "config.json")))
    positions, tokens = exported["sizes"]["max_position"], cfg.data.max_text_tokens
    if cfg.data.task not in DECODER_POSITIONS and tokens > positions:
        raise VlpdistError(
            f"data.max_text_tokens {tokens} > the {positions} positions of run.init_from {url}"
        )
    if exported["dims"]["visual_dim"] != first["feature_dim"]:
        raise VlpdistError(
            f"run.init_from {url} takes {exported['dims']['visual_dim']}-d region features; "
            f"data.sources {first['url']} has feature_dim {first['feature_dim']}"
        )
