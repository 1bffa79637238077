"""Training, whatever data.task is (pretraining, fine-tuning, a captioner): setup → build →
fit → hand off, readable top to bottom. Entered through `vlpdist.engine.run`, which runs the
preflight (setup.py) first.

One code path for a laptop (one CPU process), `deepspeed --num_gpus N --module vlpdist`,
torchrun and Ray Train workers. Rerunning the same command continues from the newest
complete checkpoint at the exact next sample, on any world size.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import yaml

from vlpdist import __version__
from vlpdist.config import Config, dump_yaml
from vlpdist.data.loader import Loader
from vlpdist.engine import checkpoint, exports, setup
from vlpdist.engine import lease as L
from vlpdist.engine.dist import Dist, init
from vlpdist.engine.evaluate import Evaluator
from vlpdist.engine.schedule import optimizer
from vlpdist.engine.telemetry import Telemetry, train_flops
from vlpdist.errors import VlpdistError
from vlpdist.models.flavors import DataDims
from vlpdist.models.losses import model_inputs
from vlpdist.models.model import build_model
from vlpdist.models.tasks import TASKS as MODEL_TASKS
from vlpdist.models.tasks import Losses
from vlpdist.storage import Storage, join

log = logging.getLogger(__name__)


def data_dims(loader: Loader) -> DataDims:
    m = loader.manifest
    return DataDims(vocab_size=loader.vocab_size, visual_dim=m["feature_dim"],
                    num_classes=m.get("cls_prob_dim"), num_labels=len(loader.labels or []) or None)  # fmt: skip


def _take_run(cfg: Config, dist: Dist, storage, run_url: str, claim: int | None):
    """Rank 0 takes the run's lease and picks the checkpoint to resume from (the newest that
    counts, read now, not at preflight); every rank gets both."""
    msg: list = [None]
    if dist.is_main:
        found = checkpoint.committed(storage, run_url)
        step, latest = found[-1] if found else (0, None)
        universal = bool(latest) and checkpoint.needs_universal(storage, latest, dist.world, cfg)
        info = {"from": latest, "world_size": dist.world, "universal": universal}
        msg = [(L.acquire(storage, run_url, claim, step, info), latest, universal)]
    if dist.world > 1:
        torch.distributed.broadcast_object_list(msg, src=0)
    return msg[0]


def build_engine(cfg: Config, model, world: int, universal: bool = False):
    """DeepSpeed's engine over `model`, configured from ours, with AdamW and its schedule;
    `universal` loads a checkpoint converted for another world size. What every run and
    `vlpdist bench train` step through."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    # fused on CUDA; ZeRO-Offload steps on the CPU with DeepSpeed's own CPU Adam
    fused = get_accelerator().device_name() == "cuda" and not cfg.deepspeed.offload_optimizer
    opt, schedule = optimizer(model, cfg.optim, fused=fused)
    ds_config = setup.deepspeed_config(cfg, world)
    if universal:
        ds_config["checkpoint"] = {"load_universal": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=schedule,
                                      config=ds_config)  # fmt: skip
    return engine


@dataclass
class Progress:
    """What the loop keeps from update to update, saved in every checkpoint (beside the
    data stream's state)."""

    step: int = 0
    evals: list[dict] = field(default_factory=list)
    best: dict | None = None  # {"step", "value", "url"} of the best evaluation so far


@dataclass
class Fit:
    """What the fit works with, built once by `train`."""

    cfg: Config
    dist: Dist
    storage: Storage
    run_url: str
    lease: L.Lease
    engine: object
    loader: Loader
    losses: Losses  # the task's (vlpdist.models.tasks)
    tel: Telemetry
    evaluator: Evaluator | None
    hand_off: Callable[[str, dict], str]  # export the model to <run>/<name>/
    watchdog: L.Watchdog
    config_yaml: str


def train(cfg: Config, pre: setup.Preflight, claim: int | None) -> dict:
    """One run of `cfg` after its preflight (`vlpdist.engine.run`). `claim` is the generation
    of the study driver that started this attempt (lease.py), None for a run started by
    hand."""
    # -- setup (the checks that need no process group ran in preflight)
    tuning = setup.TASKS[cfg.data.task].tuned  # evaluated on a val split
    t_start = time.time()
    dist = init()
    torch.manual_seed(cfg.run.seed)
    storage, run_url = pre.storage, pre.run_url
    lease, latest, universal = _take_run(cfg, dist, storage, run_url, claim)
    work = tempfile.TemporaryDirectory(prefix="vlpdist-run-")

    # -- build
    data = cfg.data
    if "itm" not in cfg.model.objectives:  # no swapped texts for a model that learns no ITM
        data = dataclasses.replace(data, itm_prob=0.0)
    loader = Loader(data, cfg.storage, rank=dist.rank, world_size=dist.world, pin_memory=True)
    labels = loader.labels
    dims = data_dims(loader)
    m, init_info = cfg.model, None
    if cfg.run.init_from:
        model, init_info = exports.init_model(storage, dist, cfg, dims, labels)
    else:
        model = build_model(m.arch, m.flavor, dims, sizes=m.sizes, objectives=m.objectives,
                            task=cfg.data.task, freeze_base=m.freeze_base,
                            text_init=m.text_init)  # fmt: skip
    flops = train_flops(model, cfg.data.max_text_tokens, cfg.data.max_regions)
    engine = build_engine(cfg, model, dist.world, universal)
    progress = Progress()
    if latest:
        saved = checkpoint.load(engine, dist, storage, latest, universal, cfg.run.seed)
        loader.load_state_dict(saved["data"])
        # checkpoints of older versions also kept "resumes": the attempts say it all
        progress = Progress(saved["step"], saved.get("evals", []), saved.get("best"))
    tok_dir = None
    if dist.is_main:  # the export's tokenizer is the shard set's
        tok_dir = loader.tokenizer_dir(os.path.join(work.name, "tok"))
    tel = Telemetry(cfg, dist, storage, run_url, os.path.join(work.name, "logs"), flops,
                    progress.step, loader.counters)  # fmt: skip

    def hand_off(name: str, extra: dict) -> str:
        if dist.is_main:
            L.check(storage, lease, f"{name}/")
        return exports.export(engine, dist, storage, join(run_url, name), cfg, tok_dir, labels,
                              {"run": run_url, **extra})  # fmt: skip

    fit = Fit(cfg=cfg, dist=dist, storage=storage, run_url=run_url, lease=lease, engine=engine,
              loader=loader, losses=MODEL_TASKS[cfg.data.task].losses, tel=tel,
              evaluator=Evaluator(cfg, dist, loader) if tuning else None, hand_off=hand_off,
              watchdog=L.Watchdog(storage, lease if dist.is_main else None),
              config_yaml=dump_yaml(cfg, redact=True))  # fmt: skip

    # -- fit
    try:
        history = _fit(fit, progress)
    finally:
        fit.watchdog.close()
    tel.close()

    # -- hand off
    out = {"run": run_url, "rank": dist.rank, "steps": engine.global_steps, "history": history,
           "resumed_from": latest}  # fmt: skip
    if not tuning:
        out["export"] = hand_off("export", {"step": progress.step})
    url = (
        join(cfg.run.results, f"{cfg.run.name}.json")
        if cfg.run.results
        else join(run_url, "result.json")
    )
    skipped: list = [None] * dist.world  # shards of which nothing could be read, any rank
    torch.distributed.all_gather_object(skipped, loader.skipped_shards())
    record = None
    if dist.is_main:
        attempts = list(L.history(storage, run_url).values())
        record = _record(fit, progress, out, init_info, t_start, attempts)
        record["throughput"]["data"]["skipped_shards"] = {
            u: w for d in skipped for u, w in d.items()
        }
        L.check(storage, lease, "the result record")
        storage.write_text(url, json.dumps(record, indent=1))
    torch.distributed.barrier()
    work.cleanup()
    return {**out, "record": url, "metric": record["metric"] if record else None}


def _fit(f: Fit, progress: Progress) -> list:
    """Updates until optim.total_steps; evaluation every eval.every (fine-tuning), a
    checkpoint every run.checkpoint_every."""
    cfg, engine, tel, r, history = f.cfg, f.engine, f.tel, f.cfg.run, []
    trace = _tracer(r.trace, f.dist.rank)
    step = progress.step
    tel.resume()
    while step < cfg.optim.total_steps:
        for batch in f.loader:
            f.watchdog.raise_if_fenced()
            trace(step + 1, batch)
            batch = batch.to(f.dist.device)
            losses = f.losses(engine(**model_inputs(batch)), batch)
            tel.micro(batch, losses)
            engine.backward(sum(losses.values()))
            # read before step(): DeepSpeed advances its micro-step counter inside step()
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            if not boundary:
                continue
            step += 1
            last = step == cfg.optim.total_steps
            rec = tel.update(step, engine.get_lr()[0], step % r.log_every == 0 or last)
            if rec:
                history.append(rec)
                if math.isnan(rec["loss"]):
                    raise VlpdistError(f"{f.run_url}: loss became NaN at step {step}")
            if f.evaluator and (last or (cfg.eval.every and step % cfg.eval.every == 0)):
                _evaluate(f, progress, step)
                tel.resume()  # evaluation time is not training throughput
            progress.step = step
            if r.checkpoint_every and step % r.checkpoint_every == 0:
                saved = {**dataclasses.asdict(progress), "data": f.loader.state_dict()}
                checkpoint.save(engine, f.dist, f.storage, f.run_url, step, saved, f.config_yaml,
                                r.keep_last, f.lease)  # fmt: skip
                tel.flush()
                tel.resume()
            if last:
                break
    return history


def _evaluate(f: Fit, progress: Progress, step: int) -> None:
    """Score the val split; a better primary metric replaces <run>/best/."""
    evaluator = f.evaluator
    metrics = evaluator(f.engine)
    value = metrics[evaluator.primary]
    progress.evals.append({"step": step, **metrics})
    f.tel.write({"step": step, **metrics}, "val")
    best = progress.best
    if best is None or value > best["value"]:
        url = f.hand_off("best", {"step": step, evaluator.primary: value})
        progress.best = {"step": step, "value": value, "url": url}


def _tracer(directory: str | None, rank: int):
    """Append (update, sample keys) of each micro-batch to rank<r>.jsonl."""
    if not directory:
        return lambda step, batch: None
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"rank{rank}.jsonl")

    def write(step: int, batch) -> None:
        real = (~batch.is_pad).tolist()
        keys = [k for k, keep in zip(batch.keys, real, strict=True) if keep]
        with open(path, "a") as f:
            f.write(json.dumps({"step": step, "keys": keys}) + "\n")

    return write


def _record(f: Fit, progress: Progress, out, init_info, t_start, attempts) -> dict:
    """The run's JSON result record: enough to rebuild every table and plot."""
    cfg, evaluator, evals, h = f.cfg, f.evaluator, progress.evals, out["history"]
    if evaluator:
        best = progress.best or {}
        final = evals[-1] if evals else {}
        at_best = next((e for e in evals if e["step"] == best.get("step")), {})
        # the controls at the best step: the same model with another image's regions
        metric = {"name": evaluator.primary, "value": best.get("value"), "step": best.get("step"),
                  "final": final.get(evaluator.primary),
                  "shuffled": at_best.get(f"{evaluator.primary}_shuffled"),
                  "image_shuffle_gap": at_best.get("image_shuffle_gap"),
                  "text_only": cfg.data.text_only}  # fmt: skip
    else:
        metric = {"name": "loss", "value": h[-1]["loss"] if h else None,
                  "step": h[-1]["step"] if h else None}  # fmt: skip
    return {
        "run": cfg.run.name,
        "kind": setup.TASKS[cfg.data.task].command,
        "task": cfg.data.task,
        "arch": cfg.model.arch,
        "flavor": cfg.model.flavor,
        "mode": "frozen" if cfg.model.freeze_base else "full",
        "fraction": cfg.data.fraction,
        "seed": cfg.run.seed,
        "status": "done",
        "metric": metric,
        "evals": evals,
        "curve": {"loss": [[r["step"], r["loss"]] for r in h[:: max(1, len(h) // 500)]]},
        "throughput": f.tel.summary(),
        "steps": progress.step,
        "train_units": f.loader.units(),
        "provenance": {
            "run_url": out["run"],
            "export": out.get("export"),
            "best": (progress.best or {}).get("url"),
            "init_from": cfg.run.init_from,
            "init_from_run": (init_info or {}).get("extra", {}).get("run"),
            "shards": f.loader.provenance(),
            "eval_shards": evaluator.loader.provenance() if evaluator else [],
            "attempts": attempts,  # every start of this run, revocations by a driver included
            "resumes": [a for a in attempts if a.get("from")],
            "vlpdist": __version__,
        },
        "seconds": round(time.time() - t_start, 2),
        "timing": {"started": t_start, "first_step": f.tel.first_step, "finished": time.time()},
        "config": yaml.safe_load(dump_yaml(cfg, redact=True)),
    }
