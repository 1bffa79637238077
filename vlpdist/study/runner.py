"""`vlpdist study CONFIG`: the paper's experiment as one command, scheduled by Ray.

The driver plans the grid (grid.py), skips every run that has a record, and keeps the
cluster busy: a run is started when its inputs exist (a fine-tuning run as soon as its
pretraining run's export is committed, not after the whole stage) and when the cluster has
the CPUs/GPUs it asks for. Each run is a Ray Train job (TorchTrainer) whose workers call the
engine, exactly as `vlpdist pretrain|finetune` would under the deepspeed launcher; a worker
that dies makes Ray Train restart the group (study.max_failures times), and the engine
resumes from the run's last complete checkpoint. A run that keeps failing is recorded as
failed with its error, and the study goes on. Killing the driver loses nothing: rerunning
the command skips finished runs and resumes interrupted ones from their checkpoints.

One writer per run: a new driver takes the study over (results.py) and revokes the lease of
every run it is about to schedule (vlpdist.engine.lease), so what a dead driver left running
stops at its next lease check, before it writes; only the driver writes study records.

With no RAY_ADDRESS it starts a local Ray on a loopback address; with RAY_ADDRESS, or
under `ray job submit`, it joins that cluster. This package is the only one importing ray.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import tempfile
import time
import uuid

import ray

from vlpdist.config import Config
from vlpdist.engine import checkpoint, lease, setup
from vlpdist.errors import VlpdistError
from vlpdist.shards.extract.cluster import connect
from vlpdist.storage import Storage, join
from vlpdist.study.grid import RunSpec, plan, study_root
from vlpdist.study.results import HEARTBEAT_S, Results, failed, finished, states, table

log = logging.getLogger(__name__)


def _train_worker(config: dict) -> None:
    """Ray Train's per-worker function: the engine, as under the deepspeed launcher (Ray
    Train sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR and the process group)."""
    from vlpdist import engine

    engine.run(config["cfg"], config["claim"])


def _one_line(e: BaseException) -> str:
    """The user-facing line of a run's failure: a VlpdistError's message, also when Ray
    wraps it in a worker group's traceback text, else the last line of the error."""
    seen = e
    while seen is not None:
        if isinstance(seen, VlpdistError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(e)
    ours = re.findall(r"vlpdist\.errors\.\w+: (.+)", text)
    if ours:
        return ours[-1].strip()[:500]
    return (text.strip().splitlines() or [type(e).__name__])[-1].strip()[:500]


def _in_task(spec: RunSpec) -> bool:
    """Fine-tuning runs of one worker train inside the Ray task's own worker process, which
    Ray reuses from run to run: a Ray Train job spends ~15 s per run starting its worker
    group and importing torch and DeepSpeed, more than a small fine-tuning run trains. Ray
    retries the task when its process dies (max_retries = study.max_failures), and the
    engine resumes from the run's last checkpoint, as in a restarted Ray Train group.
    Pretraining runs, and every run of several workers, are Ray Train jobs."""
    return spec.kind == "finetune" and spec.resources.workers == 1


@ray.remote(num_cpus=0, max_retries=0)
def _execute(spec: RunSpec, claim: int, max_failures: int, submitted: float) -> dict:
    """One run: the engine in this process (`_in_task`) or as a Ray Train job. Returns the
    run's record; the driver writes it (a task of a driver that died never does)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = time.time()
    storage = Storage(spec.cfg.storage)
    timing = {"submitted": submitted, "started": started}
    r = spec.resources
    try:
        if _in_task(spec):
            import torch.distributed

            if not torch.distributed.is_initialized():
                # a plain one-rank process: not whatever launcher variables the node's
                # environment carries (a driver that trained in-process has RANK and a port)
                for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
                    os.environ.pop(k, None)
            _train_worker({"cfg": spec.cfg, "claim": claim})
            return _finish(spec, storage, started, timing)
        # bad input fails here, at once, not in every worker of every retry of the group
        setup.preflight(spec.cfg)
        gpu = r.gpus_per_worker > 0
        per_worker = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if gpu else {})}
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={"cfg": spec.cfg, "claim": claim},
            scaling_config=ScalingConfig(num_workers=r.workers, use_gpu=gpu,
                                         resources_per_worker=per_worker),
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            run_config=RunConfig(
                name=f"{spec.name}-{uuid.uuid4().hex[:8]}",
                # Ray Train's own bookkeeping; our checkpoints and records go to run.output
                storage_path=os.path.join(tempfile.gettempdir(), "vlpdist-ray-train"),
                failure_config=FailureConfig(max_failures=max_failures),
            ),
        )  # fmt: skip
        trainer.fit()
        return _finish(spec, storage, started, timing)
    except Exception as e:  # noqa: BLE001 - every failure becomes the run's record
        return failed(
            spec, _one_line(e), time.time() - started, {**timing, "finished": time.time()}
        )


def _finish(spec: RunSpec, storage: Storage, started: float, timing: dict) -> dict:
    """The engine's record of a finished run, with the study's labels, timing and drift."""
    record = json.loads(storage.read_text(join(spec.url, "result.json")))
    if spec.probe and record.get("provenance", {}).get("export"):
        from vlpdist.analysis.grounding import probe

        try:  # does the pretrained model read words off the image? (true vs shuffled regions)
            record["grounding"] = probe(record["provenance"]["export"], spec.probe, storage)
        except VlpdistError as e:
            record["grounding"] = {"error": str(e)}
    if spec.kind == "finetune" and spec.depends and record.get("provenance", {}).get("best"):
        from vlpdist.analysis.drift import drift, summary

        try:  # how far fine-tuning moved the pretrained weights, layer by layer
            best = record["provenance"]["best"]
            record["drift"] = summary(drift(spec.cfg.run.init_from, best, storage))
        except VlpdistError as e:
            record["drift"] = {"error": str(e)}
    return finished(spec, record, time.time() - started, {**timing, "finished": time.time()})


def _need(spec: RunSpec) -> tuple[float, float]:
    r = spec.resources
    return r.workers * r.cpus_per_worker, r.workers * r.gpus_per_worker


def _resolve_storage(cfg: Config) -> Config:
    """The study's S3 settings travel with each run's config (see StorageConfig.resolved)."""
    return dataclasses.replace(cfg, storage=cfg.storage.resolved())


def run_study(cfg: Config, retry_failed: bool = False, progress: bool = True) -> dict:
    cfg = _resolve_storage(cfg)
    grid = plan(cfg)
    root = study_root(cfg)
    results = Results(Storage(cfg.storage), root)
    records = results.all()
    skip = {n for n, r in records.items() if r.get("status") == "done" or not retry_failed}
    todo = [s for s in grid if s.name not in skip]
    summary = {"study": cfg.study.name, "root": root, "runs": len(grid),
               "skipped": len(grid) - len(todo), "executed": 0}  # fmt: skip
    if not todo:
        return {**summary, "rows": states(grid, records, [])}
    claim = results.take_over()
    _revoke(results.storage, todo, claim)
    summary["ray"] = connect()
    capacity = ray.cluster_resources()
    total = (capacity.get("CPU", 0.0), capacity.get("GPU", 0.0))
    summary["cluster"] = {"cpus": total[0], "gpus": total[1]}
    for spec in todo:
        cpu, gpu = _need(spec)
        if cpu > total[0] or gpu > total[1]:
            raise VlpdistError(
                f"study run {spec.name} needs {cpu:g} CPUs and {gpu:g} GPUs; the Ray cluster has "
                f"{total[0]:g} and {total[1]:g} (study.*_resources)"
            )
    t0 = time.time()
    pending, running, done_names = list(todo), {}, set()
    bar = _bar(len(grid), summary["skipped"], progress)
    last_beat = 0.0
    while pending or running:
        used = [sum(_need(s)[i] for s in running.values()) for i in (0, 1)]
        # grid order (pretraining first: it unlocks fine-tuning); a run that does not fit
        # now lets smaller ones behind it use the free slots (backfilling)
        for spec in list(pending):
            if spec.depends and spec.depends not in records:
                continue  # its export does not exist yet
            dep = records[spec.depends] if spec.depends else {"status": "done"}
            if dep.get("status") != "done":
                pending.remove(spec)
                error = f"pretraining run {spec.depends} failed: {dep.get('error', '')}"
                records[spec.name] = failed(spec, error[:500], 0.0, {"submitted": time.time()})
                results.write(spec.name, records[spec.name])
                bar.update(1)
                continue
            cpu, gpu = _need(spec)
            if used[0] + cpu > total[0] or used[1] + gpu > total[1]:
                continue
            pending.remove(spec)
            opts = {"num_cpus": cpu, "num_gpus": gpu, "max_retries": cfg.study.max_failures}
            task = _execute.options(**opts) if _in_task(spec) else _execute
            running[task.remote(spec, claim, cfg.study.max_failures, time.time())] = spec
            used = [used[0] + cpu, used[1] + gpu]
        if time.time() - last_beat > HEARTBEAT_S / 2:
            results.heartbeat([s.name for s in running.values()], {"done": len(done_names)})
            last_beat = time.time()
        if not running:
            continue
        ready, _ = ray.wait(list(running), num_returns=1, timeout=HEARTBEAT_S / 2)
        for ref in ready:
            spec = running.pop(ref)
            rec = ray.get(ref)
            results.write(spec.name, rec)
            records[spec.name] = rec
            done_names.add(spec.name)
            summary["executed"] += 1
            bar.update(1)
            metric = rec.get("metric") or {}
            bar.write(f"{spec.name}: {rec.get('status')}"
                      + (f" {metric['name']}={metric['value']}" if metric else "")
                      + (f" ({rec['error']})" if rec.get("error") else ""), file=sys.stderr)  # fmt: skip
    bar.close()
    results.heartbeat([], {"done": len(done_names)})
    summary["makespan_s"] = round(time.time() - t0, 2)
    return {**summary, "rows": states(grid, records, [])}


def _revoke(storage: Storage, todo: list[RunSpec], claim: int) -> None:
    """Claim every run about to be scheduled that an earlier driver started: whatever of it
    still runs stops at its next lease check. (Every run of a study has its storage.)"""
    for spec in todo:
        if lease.read(storage, spec.url) is not None:
            found = checkpoint.committed(storage, spec.url)
            lease.revoke(storage, spec.url, claim, found[-1][0] if found else 0)


def _bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="run", desc="study",
                disable=None if enabled else True, dynamic_ncols=True)  # fmt: skip


def status(cfg: Config) -> str:
    cfg = _resolve_storage(cfg)
    grid = plan(cfg)
    results = Results(Storage(cfg.storage), study_root(cfg))
    return table(states(grid, results.all(), results.live()))
