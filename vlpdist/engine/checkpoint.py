"""Checkpoints on any storage URL: `<run>/checkpoints/<step>/` = DeepSpeed's engine state +
`data_state.json` (the loader's resume point, the step, the run's evaluation history) +
`config.yaml` (resolved), and `COMMITTED`, written last. A directory without the marker (a
save that died) never counts.

DeepSpeed writes to a local directory, so every rank saves into a staging directory of its
node and each node's first rank uploads what its ranks wrote; files are named by rank, so
nodes never collide. Only then does rank 0 write the data state, the config and the marker.

Every rank's random-number generators (torch CPU and CUDA, numpy, Python) are saved with the
checkpoint (`rng/rank<r>.json`) and restored on resume, so a resumed run draws the same
dropout masks as an uninterrupted one and ends bitwise equal to it on CPU.

Only the attempt holding the run's lease (lease.py) commits: the lease is checked before the
files are uploaded and before the marker, and the marker records the attempt's generation.

Resuming on another world size: partitioned optimizer state (ZeRO >= 1, or bf16, whose
optimizer DeepSpeed partitions too) is converted once per node with DeepSpeed's
`ds_to_universal` and loaded as a universal checkpoint (`checkpoint.load_universal`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import logging
import os
import random
import shutil
import tempfile
import time

import numpy as np
import torch
import torch.distributed as tdist
import yaml

from vlpdist.engine import lease as L
from vlpdist.engine.dist import Dist
from vlpdist.errors import StorageError, VlpdistError
from vlpdist.storage import Storage, join

log = logging.getLogger(__name__)
COMMIT, DATA_STATE, CONFIG, TAG = "COMMITTED", "data_state.json", "config.yaml", "state"
RNG = "rng"
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
         config_yaml: str, keep_last: int, lease: L.Lease | None) -> str:  # fmt: skip
    url = step_url(run_url, step)
    staging = node_staging(url, "save")
    engine.save_checkpoint(staging, tag=TAG)
    rng_file = os.path.join(staging, RNG, f"rank{dist.rank:05d}.json")
    os.makedirs(os.path.dirname(rng_file), exist_ok=True)
    with open(rng_file, "w") as f:
        json.dump(rng_state(dist.device), f)
    tdist.barrier()
    if dist.is_main and lease:
        L.check(storage, lease, f"checkpoint {step}")
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
        if lease:
            L.check(storage, lease, f"the commit marker of checkpoint {step}")
            marker.update(generation=lease.generation, holder=lease.holder)
        storage.write_text(join(url, COMMIT), json.dumps(marker))
        prune(storage, run_url, keep_last)
    tdist.barrier()
    return url


def _markers(storage: Storage, run_url: str) -> list[tuple[int, str, dict | None]]:
    """(step, url, commit marker or None) of every checkpoint directory, oldest first."""
    out = []
    for child in storage.ls(join(run_url, "checkpoints")):
        name = child.rsplit("/", 1)[-1]
        if not name.isdigit():
            continue
        try:
            marker = json.loads(storage.read_text(join(child, COMMIT)))
        except StorageError as e:
            if e.kind != "not_found":
                raise
            marker = None
        out.append((int(name), child, marker))
    return sorted(out)


def committed(storage: Storage, run_url: str) -> list[tuple[int, str]]:
    """(step, url) of every complete checkpoint that counts, oldest first: committed, by the
    attempt that held the run at the time (lease.counts)."""
    attempts = L.history(storage, run_url)
    return [(step, url) for step, url, marker in _markers(storage, run_url)
            if marker is not None and L.counts(marker, step, attempts)]  # fmt: skip


def prune(storage: Storage, run_url: str, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints that count; drop older ones and those a
    taken-over attempt committed late (they never count)."""
    attempts = L.history(storage, run_url)
    marked = [(s, u, m) for s, u, m in _markers(storage, run_url) if m is not None]
    valid = [u for s, u, m in marked if L.counts(m, s, attempts)]
    stale = [u for s, u, m in marked if not L.counts(m, s, attempts)]
    for url in valid[:-keep_last] + stale:
        storage.rm(join(url, COMMIT))  # uncommit first: a half-deleted one never counts
        storage.rm(url, recursive=True)


def rng_state(device: torch.device) -> dict:
    """Every generator training draws from on this rank, as JSON (no pickle)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    out = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }
    if device.type == "cuda":
        cuda = torch.cuda.get_rng_state(device).numpy().tobytes()
        out["cuda"] = base64.b64encode(cuda).decode()
    return out


def set_rng_state(state: dict, device: torch.device) -> None:
    def tensor(b64: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(b64)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(tensor(state["cuda"]), device)


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


def load(engine, dist: Dist, storage: Storage, url: str, universal: bool, seed: int) -> dict:
    """Restore the engine and this rank's generators from `url` (converted to a universal
    checkpoint first when the world size changed); returns the saved data state."""
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
    data_state = json.loads(storage.read_text(join(url, DATA_STATE)))
    rng_file = os.path.join(staging, RNG, f"rank{dist.rank:05d}.json")
    if os.path.exists(rng_file):
        with open(rng_file) as f:
            set_rng_state(json.load(f), dist.device)
    else:
        # another world size (or a checkpoint from before generators were saved): a
        # deterministic restart of the generators, not the uninterrupted run's draws
        log.info("checkpoint: %s holds no generator state for rank %d; reseeding", url, dist.rank)
        _reseed(seed, data_state["step"], dist.rank)
    tdist.barrier()
    if dist.local_rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
    return data_state


def _reseed(seed: int, step: int, rank: int) -> None:
    s = int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


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
