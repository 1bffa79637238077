"""Who may write a run: its newest attempt, and nobody else.

Every attempt of a run (a first start, a rerun, Ray's restart of a crashed worker group)
takes the run's lease, `<run>/lease.json`, with the next generation and a holder token of its
own, and writes `<run>/attempts/<generation>.json` beside it: where it started from, on how
many ranks, when. The lease is checked before every write that counts (the files and the
commit marker of a checkpoint, an export, the result record) and by a watchdog thread in
between, so an older attempt that is still running (a process of a dead study driver, a
second `vlpdist pretrain` of the same run) stops at its next check without writing.

Object stores have no compare-and-swap that every fsspec backend offers, so a check and the
write after it are not atomic. What closes that window is the commit marker: it records the
generation that wrote it, and a checkpoint of generation g counts only if its step is at
most the step that generation g + 1 (if any) took the run over from. A checkpoint an older
attempt committed after being taken over is therefore never resumed from, whatever the
timing.

A study driver claims the runs it schedules with its own generation (`claim`): an attempt
started by an older driver never takes over a run that a newer driver has claimed. A run
started by hand (no claim) always takes over.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass

from vlpdist.errors import StorageError, VlpdistError
from vlpdist.storage import Storage, join

log = logging.getLogger(__name__)
LEASE, ATTEMPTS = "lease.json", "attempts"
WATCH_S = 5.0  # how often a running attempt re-reads its lease


class Fenced(VlpdistError):
    """This attempt no longer holds its run: it stops without writing."""


@dataclass(frozen=True)
class Lease:
    run_url: str
    generation: int
    holder: str
    claim: int | None
    from_step: int


def read(storage: Storage, run_url: str) -> dict | None:
    url = join(run_url, LEASE)
    try:
        return json.loads(storage.read_text(url))
    except StorageError as e:
        if e.kind == "not_found":
            return None
        raise


def history(storage: Storage, run_url: str) -> dict[int, dict]:
    """Every attempt (and revocation) of the run by generation."""
    out = {}
    for url in storage.ls(join(run_url, ATTEMPTS)):
        name = url.rsplit("/", 1)[-1]
        if name.endswith(".json") and name[:-5].isdigit():
            out[int(name[:-5])] = json.loads(storage.read_text(url))
    return dict(sorted(out.items()))


def counts(marker: dict, step: int, attempts: dict[int, dict]) -> bool:
    """Whether a checkpoint at `step` whose commit marker is `marker` counts: committed by its
    generation before the next generation took the run over (markers written before leases
    existed carry no generation and count)."""
    nxt = attempts.get(marker.get("generation", -1) + 1)
    return nxt is None or step <= nxt["from_step"]


def _write(storage: Storage, run_url: str, entry: dict) -> None:
    storage.write_text(
        join(run_url, ATTEMPTS, f"{entry['generation']:06d}.json"), json.dumps(entry)
    )
    storage.write_text(join(run_url, LEASE), json.dumps(entry))


def acquire(storage: Storage, run_url: str, claim: int | None, from_step: int, info: dict) -> Lease:
    """Take the run over with the next generation. `from_step` is the checkpoint this attempt
    resumes from (0 for none); `info` goes into its attempts entry."""
    cur = read(storage, run_url)
    if claim is not None and cur and (cur.get("claim") or 0) > claim:
        raise Fenced(
            f"{run_url}: claimed by a newer study driver (generation {cur['claim']}); "
            f"this attempt of driver generation {claim} does not start"
        )
    entry = {"generation": (cur or {}).get("generation", 0) + 1, "holder": uuid.uuid4().hex,
             "claim": claim, "from_step": from_step, "started": time.time(), **info}  # fmt: skip
    _write(storage, run_url, entry)
    return Lease(run_url, entry["generation"], entry["holder"], claim, from_step)


def revoke(storage: Storage, run_url: str, claim: int, from_step: int) -> None:
    """A new study driver's claim on a run it is about to schedule: whatever attempt of an
    older driver still runs stops at its next check."""
    cur = read(storage, run_url)
    entry = {"generation": (cur or {}).get("generation", 0) + 1, "holder": "revoked",
             "claim": claim, "from_step": from_step, "started": time.time(), "revoked": True}  # fmt: skip
    _write(storage, run_url, entry)


def check(storage: Storage, lease: Lease, what: str) -> None:
    """Raise `Fenced` unless `lease` still holds the run; called before `what` is written."""
    cur = read(storage, lease.run_url) or {}
    if (cur.get("generation"), cur.get("holder")) != (lease.generation, lease.holder):
        raise Fenced(
            f"{lease.run_url}: taken over by attempt generation {cur.get('generation')} while "
            f"this attempt (generation {lease.generation}) ran; it stops without writing {what}"
        )


class Watchdog:
    """Re-reads the lease every WATCH_S seconds in a daemon thread; the training loop calls
    `raise_if_fenced()` between micro-batches, so a taken-over attempt stops within seconds
    rather than at its next checkpoint."""

    def __init__(self, storage: Storage, lease: Lease | None, every: float = WATCH_S):
        self.storage, self.lease, self.every = storage, lease, every
        self.error: Fenced | None = None
        self._stop = threading.Event()
        self._thread = None
        if lease is not None:
            self._thread = threading.Thread(target=self._watch, name="vlpdist-lease", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            try:
                check(self.storage, self.lease, "anything more")
            except Fenced as e:
                self.error = e
                return
            except VlpdistError as e:  # storage hiccups are the next check's business
                log.warning("lease: cannot check %s: %s", self.lease.run_url, e)

    def raise_if_fenced(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self._stop.set()
