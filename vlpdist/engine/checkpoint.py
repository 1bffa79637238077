"""Checkpoints on any storage URL: `<run>/checkpoints/<step>/` = DeepSpeed's engine state +
`data_state.json` (the loader's resume point and the step) + `config.yaml` (resolved), and
`COMMITTED`, written last. A directory without the marker (a save that died) never counts.

DeepSpeed writes to a local directory, so every rank saves into a staging directory of its
node and each node's first rank uploads what its ranks wrote; files are named by rank, so
nodes never collide. Only then does rank 0 write the data state, the config and the marker.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import torch.distributed as tdist

from vlpdist.engine.dist import Dist
from vlpdist.errors import VlpdistError
from vlpdist.storage import Storage, join

COMMIT, DATA_STATE, CONFIG, TAG = "COMMITTED", "data_state.json", "config.yaml", "state"


def step_url(run_url: str, step: int) -> str:
    return join(run_url, "checkpoints", f"{step:08d}")


def _staging(run_url: str, step: int) -> str:
    # the same path on every rank of a node (DeepSpeed needs one save_dir for all ranks)
    safe = "".join(c if c.isalnum() else "_" for c in run_url)[-80:]
    return os.path.join(tempfile.gettempdir(), f"vlpdist-ckpt-{safe}-{step}")


def save(engine, dist: Dist, storage: Storage, run_url: str, step: int, state: dict,
         config_yaml: str, keep_last: int) -> str:  # fmt: skip
    url = step_url(run_url, step)
    staging = _staging(run_url, step)
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


def load(engine, dist: Dist, storage: Storage, url: str, zero_stage: int) -> dict:
    """Restore the engine from `url`; returns the saved data state."""
    marker = json.loads(storage.read_text(join(url, COMMIT)))
    if marker["world_size"] != dist.world and zero_stage > 0:
        raise VlpdistError(
            f"{url}: saved by {marker['world_size']} ranks with ZeRO stage {zero_stage}, resumed by "
            f"{dist.world}; run with {marker['world_size']} ranks (universal-checkpoint "
            "conversion is not there yet)"
        )
    staging = _staging(url, -1)
    if dist.local_rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        for file_url in storage.find(url):
            rel = file_url[len(url.rstrip("/")) + 1 :]  # find() keeps the url as given
            if rel in (COMMIT, DATA_STATE, CONFIG):
                continue
            storage.get_file(file_url, os.path.join(staging, rel))
    tdist.barrier()
    engine.load_checkpoint(staging, tag=TAG)
    tdist.barrier()
    if dist.local_rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
    return json.loads(storage.read_text(join(url, DATA_STATE)))
