"""Checkpoints on any storage URL: `<run>/checkpoints/<step>/` = DeepSpeed's engine state +
`data_state.json` (the loader's resume point, the step, the run's evaluation history) +
`config.yaml` (resolved), and `COMMITTED`, written last. A directory without the marker (a
save that died) never counts.

DeepSpeed writes to a local directory, so every rank saves into a staging directory of its
node and each node's first rank uploads what its ranks wrote; files are named by rank, so
nodes never collide. Only then does rank 0 write the data state, the config and the marker.

Resuming on another world size: partitioned optimizer state (ZeRO >= 1, or bf16, whose
optimizer DeepSpeed partitions too) is converted once per node with DeepSpeed's
`ds_to_universal` and loaded as a universal checkpoint (`checkpoint.load_universal`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import time

import torch.distributed as tdist
import yaml

from vlpdist.engine.dist import Dist
from vlpdist.errors import VlpdistError
from vlpdist.storage import Storage, join

log = logging.getLogger(__name__)
COMMIT, DATA_STATE, CONFIG, TAG = "COMMITTED", "data_state.json", "config.yaml", "state"
UNIVERSAL_TAG = "state_universal"
# what must match for a checkpoint to be this run's: the model it trains
SAME_MODEL = ("model", "task")


def step_url(run_url: str, step: int) -> str:
    return join(run_url, "checkpoints", f"{step:08d}")


def node_staging(url: str, kind: str) -> str:
    """A local directory for `url`, the same path on every rank of a node (DeepSpeed needs
    one save_dir for all ranks)."""
    safe = "".join(c if c.isalnum() else "_" for c in url)[-80:]
    return os.path.join(tempfile.gettempdir(), f"vlpdist-{kind}-{safe}")


def save(engine, dist: Dist, storage: Storage, run_url: str, step: int, state: dict,
         config_yaml: str, keep_last: int) -> str:  # fmt: skip
    url = step_url(run_url, step)
    staging = node_staging(url, "save")
    engine.save_checkpoint(staging, tag=TAG)
    tdist.barrier()
    if dist.local_rank == 0:
        for root, _, files in os.walk(staging):
            for name in files:
                path = os.path.join(root, name)
                storage.put_file(path, join(url, os.path.relpath(path, staging)))
        shutil.rmtree(staging, ignore_errors=True)
    tdist.barrier()
    if dist.is_main:
        storage.write_text(join(url, DATA_STATE), json.dumps(state))
        storage.write_text(join(url, CONFIG), config_yaml)
        marker = {"step": step, "world_size": dist.world, "time": time.time()}
        storage.write_text(join(url, COMMIT), json.dumps(marker))
        prune(storage, run_url, keep_last)
    tdist.barrier()
    return url


def committed(storage: Storage, run_url: str) -> list[tuple[int, str]]:
    """(step, url) of every complete checkpoint, oldest first."""
    out = []
    for child in storage.ls(join(run_url, "checkpoints")):
        name = child.rsplit("/", 1)[-1]
        if name.isdigit() and storage.exists(join(child, COMMIT)):
            out.append((int(name), child))
    return sorted(out)


def prune(storage: Storage, run_url: str, keep_last: int) -> None:
    for _, url in committed(storage, run_url)[:-keep_last]:
        storage.rm(join(url, COMMIT))  # uncommit first: a half-deleted one never counts
        storage.rm(url, recursive=True)


def check_same_model(storage: Storage, url: str, config: dict) -> None:
    """A checkpoint of another model (another arch, size or task under the same run name)
    cannot be resumed: say so in one line instead of DeepSpeed's shape-mismatch trace."""
    saved = yaml.safe_load(storage.read_text(join(url, CONFIG))) or {}
    here = {"model": config["model"], "task": config["data"]["task"]}
    there = {"model": saved.get("model"), "task": (saved.get("data") or {}).get("task")}
    for key in SAME_MODEL:
        if here[key] != there[key]:
            diff = here[key] if key == "task" else _diff(there[key] or {}, here[key])
            raise VlpdistError(
                f"{url}: a checkpoint of another model ({key} differs: {diff}); resume it with "
                "its own config, or choose another run.name / run.output"
            )


def _diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return ", ".join(f"model.{k} was {old.get(k)!r}, now {new.get(k)!r}" for k in keys)


def needs_universal(storage: Storage, url: str, world: int, cfg) -> bool:
    """Whether resuming `url` on `world` ranks goes through a universal checkpoint."""
    marker = json.loads(storage.read_text(join(url, COMMIT)))
    partitioned = cfg.deepspeed.zero_stage > 0 or cfg.deepspeed.precision == "bf16"
    return marker["world_size"] != world and partitioned


def load(engine, dist: Dist, storage: Storage, url: str, universal: bool) -> dict:
    """Restore the engine from `url` (converted to a universal checkpoint first when the
    world size changed); returns the saved data state."""
    staging = node_staging(url, "load")
    tag = UNIVERSAL_TAG if universal else TAG
    if dist.local_rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        storage.get_dir(url, staging, skip=(COMMIT, DATA_STATE, CONFIG))
        if universal:
            _to_universal(os.path.join(staging, TAG), os.path.join(staging, UNIVERSAL_TAG))
    tdist.barrier()
    try:
        engine.load_checkpoint(staging, tag=tag)
    except (RuntimeError, KeyError, ValueError) as e:  # DeepSpeed's own words, first line
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise VlpdistError(f"{url}: cannot be loaded into this run's model ({first})") from None
    tdist.barrier()
    if dist.local_rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
    return json.loads(storage.read_text(join(url, DATA_STATE)))


def _to_universal(src: str, dst: str) -> None:
    """DeepSpeed's ds_to_universal, in process; its chatter goes to the debug log."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    args = argparse.Namespace(
        input_folder=src, output_folder=dst, num_extract_workers=1, num_merge_workers=1,
        keep_temp_folder=False, strict=True, inject_missing_state=True,
    )  # fmt: skip
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        ds_to_universal(args)
    log.info("checkpoint: universal conversion of %s in %.1f s", src, time.perf_counter() - t0)
    log.debug("%s", out.getvalue())
