"""One writer per run: leases, fenced commits, a taken-over attempt stops without writing.

Unit tests run the lease rules on a local directory and on the loopback S3 server; the
integration test takes a real `vlpdist pretrain` process over while it trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlpdist.engine import checkpoint
from vlpdist.engine import lease as L
from vlpdist.errors import VlpdistError
from vlpdist.storage import Storage, join
from vlpdist.study.results import Results

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["file", "s3"])
def run_url(request, tmp_path):
    if request.param == "file":
        return str(tmp_path / "run")
    s3 = request.getfixturevalue("s3")
    return s3.url("runs", "r")


def commit(storage: Storage, run_url: str, step: int, lease: L.Lease) -> None:
    """A checkpoint directory as `checkpoint.save` leaves it, marker last."""
    url = checkpoint.step_url(run_url, step)
    storage.write_text(join(url, "state", "weights"), f"step {step}")
    marker = {"step": step, "world_size": 1, "generation": lease.generation}
    storage.write_text(join(url, checkpoint.COMMIT), json.dumps(marker))


def test_the_newest_attempt_holds_the_run(run_url):
    st = Storage()
    a = L.acquire(st, run_url, None, 0, {"from": None})
    L.check(st, a, "anything")
    b = L.acquire(st, run_url, None, 0, {"from": None})
    assert (a.generation, b.generation) == (1, 2) and a.holder != b.holder
    L.check(st, b, "anything")
    with pytest.raises(L.Fenced, match=r"taken over by attempt generation 2 .* without writing x"):
        L.check(st, a, "x")
    assert list(L.history(st, run_url)) == [1, 2]


def test_a_commit_after_the_takeover_never_counts(run_url):
    st = Storage()
    old = L.acquire(st, run_url, None, 0, {})
    commit(st, run_url, 4, old)
    commit(st, run_url, 8, old)
    new = L.acquire(st, run_url, None, 8, {"from": "8"})  # took over from checkpoint 8
    commit(st, run_url, 12, old)  # the old attempt got past its check just before: too late
    assert [s for s, _ in checkpoint.committed(st, run_url)] == [4, 8]
    commit(st, run_url, 12, new)  # the holder's own checkpoint 12 counts
    assert [s for s, _ in checkpoint.committed(st, run_url)] == [4, 8, 12]
    commit(st, run_url, 16, old)  # a late one of the old attempt is dropped by the next prune
    checkpoint.prune(st, run_url, keep_last=2)
    assert [s for s, _ in checkpoint.committed(st, run_url)] == [8, 12]
    assert not st.exists(join(checkpoint.step_url(run_url, 16), checkpoint.COMMIT))


def test_a_newer_driver_claim_wins(run_url):
    st = Storage()
    first = L.acquire(st, run_url, 1, 0, {})  # started by driver generation 1
    L.revoke(st, run_url, 2, 0)  # driver generation 2 takes the study over
    with pytest.raises(L.Fenced):
        L.check(st, first, "a checkpoint")
    with pytest.raises(L.Fenced, match="newer study driver"):
        L.acquire(st, run_url, 1, 0, {})  # driver 1's retry does not take it back
    mine = L.acquire(st, run_url, 2, 0, {})
    assert mine.generation == 3
    assert L.acquire(st, run_url, None, 0, {}).generation == 4  # a run started by hand
    assert L.history(st, run_url)[2]["revoked"] is True


def test_watchdog_notices_a_takeover():
    class Storage_:  # the storage answers a newer lease at once
        def read_text(self, url):
            return json.dumps({"generation": 2, "holder": "other"})

    w = L.Watchdog(Storage_(), L.Lease("r", 1, "me", None, 0), every=0.01)
    w._thread.join(timeout=10)
    with pytest.raises(L.Fenced):
        w.raise_if_fenced()
    w.close()


def test_a_taken_over_study_driver_stops(tmp_path):
    st = Storage()
    first, second = Results(st, str(tmp_path / "s")), Results(st, str(tmp_path / "s"))
    assert first.take_over() == 1
    first.write("run-a", {"status": "done"})
    assert second.take_over() == 2
    with pytest.raises(VlpdistError, match="another study driver took over .*generation 2"):
        first.write("run-b", {"status": "done"})
    with pytest.raises(VlpdistError):
        first.heartbeat([], {})
    second.write("run-b", {"status": "done"})
    assert sorted(second.all()) == ["run-a", "run-b"]


def test_a_running_pretraining_taken_over_stops_without_writing(world, tmp_path):
    """A real `vlpdist pretrain` trains; a new study driver revokes the run after its first
    checkpoint. The attempt stops within a lease check, with one line, and commits, exports
    and records nothing after."""
    out = tmp_path / "runs"
    run = out / "tiny"
    cmd = [sys.executable, "-m", "vlpdist", "pretrain", str(REPO / "configs/pretrain/tiny.yaml"),
           f"data.sources=[{{url: {world / 'coco_like'}}}]", f"run.output={out}",
           "data.batch_size=4", "deepspeed.global_batch_size=4", "data.max_regions=16",
           "optim.total_steps=100000", "optim.warmup_steps=2", "run.checkpoint_every=2"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    st = Storage()
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if checkpoint.committed(st, str(run)):
                break
            time.sleep(0.1)
        found = checkpoint.committed(st, str(run))
        assert found, proc.communicate()[1][-3000:]
        L.revoke(st, str(run), 2, found[-1][0])
        _, err = proc.communicate(timeout=120)  # within a lease check, not at step 100000
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("vlpdist: error:")]
    assert len(lines) == 1 and "taken over by attempt generation 2" in lines[0]
    assert "Traceback" not in err
    assert [s for s, _ in checkpoint.committed(st, str(run))][-1] <= found[-1][0]
    assert not (run / "result.json").exists() and not (run / "export").exists()
