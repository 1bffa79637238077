"""The study's results store on any storage URL: one JSON record per run under
`<study>/results/<run>.json`, status "done" (the engine's record of the run) or "failed"
(with the error); both carry the study's grid labels and timing under "study" (`finished`,
`failed`). A run with a record is not run again (failed
ones only with --retry-failed).

Only the study's current driver writes here. A driver takes the study over when it starts
(`<study>/driver.json`, a generation and a token of its own) and checks that it still holds
it before every record and heartbeat: a driver that another one took over stops instead of
writing. Its runs are fenced by their own leases (vlpdist.engine.lease).

The driver also keeps `<study>/status.json` fresh while it runs (which runs are in flight,
a heartbeat), so `vlpdist study status` can tell running from interrupted.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid

from vlpdist.errors import StorageError, VlpdistError
from vlpdist.storage import Storage, join
from vlpdist.study.grid import RunSpec

HEARTBEAT_S = 10.0  # the driver rewrites status.json at least this often
DRIVER = "driver.json"


def _study(spec: RunSpec, run_s: float, timing: dict) -> dict:
    """What the study adds to every record, done or failed, under "study": the run's grid
    labels, its duration as the driver saw it, and when it was submitted, started and
    finished."""
    return {"labels": spec.labels, "run_s": round(run_s, 2), "timing": timing}


def finished(spec: RunSpec, record: dict, run_s: float, timing: dict) -> dict:
    """The engine's record of a run that finished, with the study's section."""
    return {**record, "study": _study(spec, run_s, timing)}


def failed(spec: RunSpec, error: str, run_s: float, timing: dict) -> dict:
    """The record of a run that failed (or could not start), with its error."""
    return {"run": spec.name, "kind": spec.kind, "status": "failed", "error": error,
            "study": _study(spec, run_s, timing)}  # fmt: skip


class Results:
    def __init__(self, storage: Storage, root: str):
        self.storage, self.root = storage, root
        self.url = join(root, "results")
        self.driver: dict | None = None  # this driver's hold on the study, once taken

    def take_over(self) -> int:
        """Hold the study from now on; returns this driver's generation."""
        cur = self._read_driver() or {}
        self.driver = {"generation": cur.get("generation", 0) + 1, "token": uuid.uuid4().hex,
                       "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}  # fmt: skip
        self.storage.write_text(join(self.root, DRIVER), json.dumps(self.driver))
        return self.driver["generation"]

    def _read_driver(self) -> dict | None:
        try:
            return json.loads(self.storage.read_text(join(self.root, DRIVER)))
        except StorageError as e:
            if e.kind == "not_found":
                return None
            raise

    def check(self) -> None:
        """Raise unless this driver still holds the study."""
        cur = self._read_driver() or {}
        if self.driver is None or cur.get("token") != self.driver["token"]:
            raise VlpdistError(
                f"{self.root}: another study driver took over (generation "
                f"{cur.get('generation')}, {cur.get('host')} pid {cur.get('pid')}); this one "
                "stops without writing"
            )

    def write(self, name: str, record: dict) -> None:
        self.check()
        self.storage.write_text(self.record_url(name), json.dumps(record, indent=1))

    def record_url(self, name: str) -> str:
        return join(self.url, f"{name}.json")

    def all(self) -> dict[str, dict]:
        """Every record by run name (unreadable ones are reported as such, never dropped)."""
        out = {}
        for url in self.storage.ls(self.url):
            if not url.endswith(".json"):
                continue
            name = url.rsplit("/", 1)[-1][: -len(".json")]
            try:
                out[name] = json.loads(self.storage.read_text(url))
            except json.JSONDecodeError as e:
                out[name] = {
                    "run": name,
                    "status": "failed",
                    "error": f"{url}: unreadable record ({e.msg})",
                }
        return out

    def heartbeat(self, running: list[str], counts: dict) -> None:
        self.check()
        state = {"time": time.time(), "running": running, "counts": counts}
        self.storage.write_text(join(self.root, "status.json"), json.dumps(state))

    def live(self) -> list[str]:
        """Runs in flight according to a driver seen alive in the last three heartbeats."""
        url = join(self.root, "status.json")
        if not self.storage.exists(url):
            return []
        state = json.loads(self.storage.read_text(url))
        fresh = time.time() - state.get("time", 0) < 3 * HEARTBEAT_S
        return state.get("running", []) if fresh else []


def states(plan: list[RunSpec], records: dict[str, dict], live: list[str]) -> list[dict]:
    """One row per run: name, kind, state (pending, running, done, failed) and metric."""
    rows = []
    for spec in plan:
        rec = records.get(spec.name)
        if rec:
            state = rec.get("status", "failed")
        else:
            state = "running" if spec.name in live else "pending"
        metric = (rec or {}).get("metric") or {}
        value = metric.get("value")
        rows.append({
            "run": spec.name, "kind": spec.kind, "state": state,
            "metric": f"{metric.get('name')}={value:.4f}" if isinstance(value, float) else "",
            "error": (rec or {}).get("error", ""),
        })  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    """A plain-text table with a progress bar line at the end."""
    widths = {
        k: max(len(k), *(len(str(r[k])) for r in rows)) for k in ("run", "kind", "state", "metric")
    }
    lines = ["  ".join(k.ljust(w) for k, w in widths.items())]
    for r in rows:
        line = "  ".join(str(r[k]).ljust(w) for k, w in widths.items())
        lines.append((line + ("  " + r["error"][:120] if r["error"] else "")).rstrip())
    finished = sum(r["state"] in ("done", "failed") for r in rows)
    n = max(len(rows), 1)
    bar = "#" * round(30 * finished / n) + "." * (30 - round(30 * finished / n))
    counts = {
        s: sum(r["state"] == s for r in rows) for s in ("done", "failed", "running", "pending")
    }
    lines.append(f"[{bar}] {finished}/{len(rows)} finished  "
                 + "  ".join(f"{k} {v}" for k, v in counts.items()))  # fmt: skip
    return "\n".join(lines)
