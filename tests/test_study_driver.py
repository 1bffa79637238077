"""`vlpdist study` on a local Ray: the driver killed with SIGKILL mid-pretraining loses
nothing; started again, it takes the study over, skips what finished and resumes the run
from its checkpoint, and nothing of the dead driver writes a record meanwhile (passes five
times in a row beside a CPU hog: `python -c "while True: pass"`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes and clusters: scheduled first (conftest)

REPO = Path(__file__).resolve().parents[1]


def test_a_killed_driver_restarted_continues_the_study(world, tmp_path):
    cmd = [sys.executable, "-m", "vlpdist", "study", str(REPO / "configs/study/tiny.yaml"),
           f"study.shards={world}", f"run.output={tmp_path}",
           "study.pretrain_overrides=[optim.total_steps=80, optim.warmup_steps=2, "
           "run.checkpoint_every=20, run.log_every=50]",
           # what this test is about is the driver: the controls and the probe are the
           # cluster test's (test_study_cluster.py)
           "study.controls=false", "study.grounding=[]"]  # fmt: skip
    driver = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpts = tmp_path / "tiny/runs/pre-visual_bert-coco/checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        if any((c / "COMMITTED").exists() for c in ckpts.glob("*")):
            break
        time.sleep(0.1)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    assert driver.returncode == -signal.SIGKILL
    results = tmp_path / "tiny/results"
    assert not (results / "pre-visual_bert-coco.json").exists()  # killed before it finished
    before = {p.name for p in results.glob("*.json")}

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["runs"] == 3 and summary["skipped"] == len(before)
    assert summary["executed"] == 3 - len(before)  # only what had no record
    rec = json.loads((results / "pre-visual_bert-coco.json").read_text())
    assert rec["status"] == "done" and rec["steps"] == 80
    assert rec["provenance"]["resumes"][0]["from"].startswith(str(ckpts))
    # the new driver (generation 2) revoked the run before it started it again: whatever the
    # dead driver left running could not write after that
    attempts = rec["provenance"]["attempts"]
    claims = [a["claim"] for a in attempts]
    assert claims == sorted(claims) and claims[0] == 1 and claims[-1] == 2
    assert any(a.get("revoked") and a["claim"] == 2 for a in attempts)
    assert json.loads((tmp_path / "tiny/driver.json").read_text())["generation"] == 2
