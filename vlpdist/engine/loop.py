"""`vlpdist pretrain CONFIG` and `vlpdist finetune CONFIG`: setup → build → fit → hand off,
readable top to bottom.

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
from vlpdist.engine.telemetry import Telemetry
from vlpdist.errors import VlpdistError
from vlpdist.models.flavors import DataDims
from vlpdist.models.flops import flops_per_sample
from vlpdist.models.losses import caption_loss, model_inputs, pretrain_losses, task_loss
from vlpdist.models.model import build_model
from vlpdist.storage import join

log = logging.getLogger(__name__)


def data_dims(loader: Loader) -> DataDims:
    m = loader.manifest
    return DataDims(vocab_size=loader.vocab_size, visual_dim=m["feature_dim"],
                    num_classes=m.get("cls_prob_dim"), num_labels=len(loader.labels or []) or None)  # fmt: skip


# Each entry takes the preflight's result when its caller already ran it (the CLI does, to
# fail before the heavy imports); otherwise it runs the checks itself. `claim` is the
# generation of the study driver that started this attempt (lease.py), None for a run
# started by hand.
def pretrain(cfg: Config, pre: setup.Preflight | None = None, claim: int | None = None) -> dict:
    return _run(cfg, pre or setup.preflight(cfg, "pretrain"), claim)


def finetune(cfg: Config, pre: setup.Preflight | None = None, claim: int | None = None) -> dict:
    return _run(cfg, pre or setup.preflight(cfg, "finetune"), claim)


def caption(cfg: Config, pre: setup.Preflight | None = None, claim: int | None = None) -> dict:
    """Train a captioner (data.task caption); its export writes CCG captions (vlpdist.ccg)."""
    return _run(cfg, pre or setup.preflight(cfg, "caption"), claim)


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

    opt, schedule = optimizer(model, cfg.optim)
    ds_config = setup.deepspeed_config(cfg, world)
    if universal:
        ds_config["checkpoint"] = {"load_universal": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=schedule,
                                      config=ds_config)  # fmt: skip
    return engine


def _run(cfg: Config, pre: setup.Preflight, claim: int | None) -> dict:
    # -- setup (the checks that need no process group ran in preflight)
    tuning = cfg.data.task not in ("pretrain", "caption")  # evaluated on a val split
    t_start = time.time()
    dist = init()
    torch.manual_seed(cfg.run.seed)
    storage, run_url = pre.storage, pre.run_url
    lease, latest, universal = _take_run(cfg, dist, storage, run_url, claim)
    config_yaml = dump_yaml(cfg, redact=True)
    work = tempfile.TemporaryDirectory(prefix="vlpdist-run-")

    # -- build
    data = cfg.data
    if "itm" not in cfg.model.objectives:  # no swapped texts for a model that learns no ITM
        data = dataclasses.replace(data, itm_prob=0.0)
    loader = Loader(data, cfg.storage, rank=dist.rank, world_size=dist.world)
    labels = loader.labels
    dims = data_dims(loader)
    m, init_info = cfg.model, None
    if cfg.run.init_from:
        model, init_info = exports.init_model(storage, dist, cfg, dims, labels)
    else:
        model = build_model(m.arch, m.flavor, dims, sizes=m.sizes, objectives=m.objectives,
                            task=cfg.data.task, freeze_base=m.freeze_base,
                            text_init=m.text_init)  # fmt: skip
    flops = flops_per_sample(model, cfg.data.max_text_tokens, cfg.data.max_regions)["train_step"]
    engine = build_engine(cfg, model, dist.world, universal)
    state = {"step": 0, "evals": [], "best": None}
    if latest:
        state.update(checkpoint.load(engine, dist, storage, latest, universal, cfg.run.seed))
        loader.load_state_dict(state.pop("data"))
        state.pop("resumes", None)  # kept by checkpoints of older versions; attempts say it all
    tok_dir = None
    if dist.is_main:  # the export's tokenizer is the shard set's
        tok_dir = loader.tokenizer_dir(storage, os.path.join(work.name, "tok"))
    tel = Telemetry(cfg, dist, storage, run_url, os.path.join(work.name, "logs"), flops,
                    state["step"], loader.counters)  # fmt: skip
    evaluator = Evaluator(cfg, dist, labels) if tuning else None
    watchdog = L.Watchdog(storage, lease if dist.is_main else None)

    def hand_off(name: str, extra: dict) -> str:
        if dist.is_main:
            L.check(storage, lease, f"{name}/")
        return exports.export(engine, dist, storage, join(run_url, name), cfg, tok_dir, labels,
                              {"run": run_url, **extra})  # fmt: skip

    # -- fit
    try:
        history = _fit(cfg, dist, engine, loader, storage, run_url, config_yaml, state, tel,
                       evaluator, hand_off, lease, watchdog)  # fmt: skip
    finally:
        watchdog.close()
    tel.close()

    # -- hand off
    out = {"run": run_url, "rank": dist.rank, "steps": engine.global_steps, "history": history,
           "resumed_from": latest}  # fmt: skip
    if not tuning:
        out["export"] = hand_off("export", {"step": state["step"]})
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
        record = _record(cfg, loader, evaluator, state, tel, out, init_info, t_start, attempts)
        record["throughput"]["data"]["skipped_shards"] = {
            u: w for d in skipped for u, w in d.items()
        }
        L.check(storage, lease, "the result record")
        storage.write_text(url, json.dumps(record, indent=1))
    torch.distributed.barrier()
    work.cleanup()
    return {**out, "record": url, "metric": record["metric"] if record else None}


def _fit(cfg, dist: Dist, engine, loader: Loader, storage, run_url, config_yaml, state, tel,
         evaluator, hand_off, lease, watchdog) -> list:  # fmt: skip
    """Updates until optim.total_steps; evaluation every eval.every (fine-tuning), a
    checkpoint every run.checkpoint_every."""
    r, history, task = cfg.run, [], cfg.data.task
    trace = _tracer(r.trace, dist.rank)
    step = state["step"]
    tel.resume()
    while step < cfg.optim.total_steps:
        for batch in loader:
            watchdog.raise_if_fenced()
            trace(step + 1, batch)
            batch = batch.to(dist.device)
            out = engine(**model_inputs(batch))
            if task == "pretrain":
                losses = pretrain_losses(out, batch)
            elif task == "caption":
                losses = {"caption": caption_loss(out["caption"], batch)}
            else:
                losses = {"task": task_loss(task, out["logits"], batch)}
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
                    raise VlpdistError(f"{run_url}: loss became NaN at step {step}")
            if evaluator and (last or (cfg.eval.every and step % cfg.eval.every == 0)):
                _evaluate(evaluator, engine, state, step, tel, hand_off)
                tel.resume()  # evaluation time is not training throughput
            state["step"] = step
            if r.checkpoint_every and step % r.checkpoint_every == 0:
                saved = {**state, "data": loader.state_dict()}
                checkpoint.save(
                    engine, dist, storage, run_url, step, saved, config_yaml, r.keep_last, lease
                )
                tel.flush()
                tel.resume()
            if last:
                break
    return history


def _evaluate(evaluator: Evaluator, engine, state: dict, step: int, tel, hand_off) -> None:
    """Score the val split; a better primary metric replaces <run>/best/."""
    metrics = evaluator(engine)
    value = metrics[evaluator.primary]
    state["evals"].append({"step": step, **metrics})
    tel.write({"step": step, **metrics}, "val")
    best = state["best"]
    if best is None or value > best["value"]:
        url = hand_off("best", {"step": step, evaluator.primary: value})
        state["best"] = {"step": step, "value": value, "url": url}


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


def _record(cfg, loader, evaluator, state, tel, out, init_info, t_start, attempts) -> dict:
    """The run's JSON result record: enough to rebuild every table and plot."""
    h = out["history"]
    if evaluator:
        best = state["best"] or {}
        final = state["evals"][-1] if state["evals"] else {}
        at_best = next((e for e in state["evals"] if e["step"] == best.get("step")), {})
        # the controls at the best step: the same model with another image's regions
        metric = {"name": evaluator.primary, "value": best.get("value"), "step": best.get("step"),
                  "final": final.get(evaluator.primary),
                  "shuffled": at_best.get(f"{evaluator.primary}_shuffled"),
                  "image_shuffle_gap": at_best.get("image_shuffle_gap"),
                  "text_only": cfg.data.text_only}  # fmt: skip
    else:
        metric = {"name": "loss", "value": h[-1]["loss"] if h else None,
                  "step": h[-1]["step"] if h else None}  # fmt: skip
    units = loader.units()
    return {
        "run": cfg.run.name,
        "kind": "finetune" if evaluator else cfg.data.task,
        "task": cfg.data.task,
        "arch": cfg.model.arch,
        "flavor": cfg.model.flavor,
        "mode": "frozen" if cfg.model.freeze_base else "full",
        "fraction": cfg.data.fraction,
        "seed": cfg.run.seed,
        "status": "done",
        "metric": metric,
        "evals": state["evals"],
        "curve": {"loss": [[r["step"], r["loss"]] for r in h[:: max(1, len(h) // 500)]]},
        "throughput": tel.summary(),
        "steps": state["step"],
        "train_units": units,
        "provenance": {
            "run_url": out["run"],
            "export": out.get("export"),
            "best": (state["best"] or {}).get("url"),
            "init_from": cfg.run.init_from,
            "init_from_run": (init_info or {}).get("extra", {}).get("run"),
            "shards": loader.provenance(),
            "eval_shards": evaluator.loader.provenance() if evaluator else [],
            "attempts": attempts,  # every start of this run, revocations by a driver included
            "resumes": [a for a in attempts if a.get("from")],
            "vlpdist": __version__,
        },
        "seconds": round(time.time() - t_start, 2),
        "timing": {"started": t_start, "first_step": tel.first_step, "finished": time.time()},
        "config": yaml.safe_load(dump_yaml(cfg, redact=True)),
    }
