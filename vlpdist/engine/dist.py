"""Who am I in the job: one entry for the deepspeed launcher, torchrun, Ray Train workers
and a plain single process (which gets a one-rank gloo group on loopback)."""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_ninja() -> None:
    """Put the ninja of this environment (pip's `ninja`, a DeepSpeed dependency) first on PATH.

    On CPU DeepSpeed JIT-builds its shared-memory comm op through torch's cpp_extension,
    which runs the first `ninja` on PATH. Two ninja versions (pip's and a system one) hash
    build commands differently, so each takes the other's build for a stale one: processes
    with different PATHs (an activated venv, Ray workers, a plain `.venv/bin/python`)
    rebuilt the op in turn, about a minute each time."""
    try:
        import ninja
    except ImportError:
        return
    path = os.environ.get("PATH", "")
    if os.path.isfile(os.path.join(ninja.BIN_DIR, "ninja")) and not path.startswith(ninja.BIN_DIR):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path


def _unlink_shm(rank: int) -> None:
    """Remove this rank's name of DeepSpeed's CPU all-reduce buffer from /dev/shm.

    DeepSpeed's shm comm op (csrc/cpu/comm/shm.cpp) creates one 66 MB segment per rank,
    `deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>`, and never
    unlinks it. Every CPU job of local ranks, killed or not, left its segments in /dev/shm
    until reboot: 15 GB on a test machine, until Ray's memory monitor killed training
    workers. `init_distributed` returns once this rank has mapped every rank's segment; after
    a barrier every rank has. The names can then go: the mappings stay valid, and the memory
    is freed when the last process holding it exits, however it exits."""
    import torch.distributed as tdist

    tdist.barrier()
    name = "deepspeed_allreduce_buffer_{}_{}_{}_{}".format(
        os.getuid(), os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", ""), rank
    )
    with contextlib.suppress(FileNotFoundError):  # no segment: ranks on several nodes
        os.unlink(os.path.join("/dev/shm", name))


def init() -> Dist:
    """Initialise torch.distributed through DeepSpeed (NCCL on GPUs, gloo on CPU)."""
    cuda = torch.cuda.is_available()
    if not cuda:
        # DeepSpeed picks its accelerator at import time; CPU needs saying so first
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        _one_ninja()
    if "RANK" not in os.environ:  # a plain process: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if not cuda:
        _unlink_shm(rank)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Dist(rank, world, local, device)
