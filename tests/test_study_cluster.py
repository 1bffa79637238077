"""The study on the local cluster (launch/local_cluster.sh: an S3 server, a Ray head and a
second Ray node, as processes), submitted with `ray job submit` (launch/ray_submit.sh):
records and exports land in the bucket, a bad shard URL fails one run and not the study, a
rerun executes nothing, and a training worker killed with SIGKILL mid-pretraining is
restarted by Ray and resumes from its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import free_port

from vlpdist.storage import Storage

pytestmark = pytest.mark.slow  # processes and clusters: scheduled first (conftest)

REPO = Path(__file__).resolve().parents[1]
STUDY = ["configs/study/tiny.yaml", "run.output=s3://vlpdist/studies",
         "study.shards=s3://vlpdist/world/shards"]  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The compose topology as processes, on ports of its own; torn down at the end."""
    state = tmp_path_factory.mktemp("cluster")
    ports = {k: str(free_port()) for k in ("S3_PORT", "RAY_PORT", "DASHBOARD_PORT",
                                           "RAY_CLIENT_PORT", "DASHBOARD_AGENT_PORT")}  # fmt: skip
    env = {**os.environ, **ports, "VLPDIST_CLUSTER_DIR": str(state), "RAY_HEAD_IP": "127.0.0.6",
           "RAY_WORKER_IP": "127.0.0.7", "HEAD_CPUS": "1", "WORKER_CPUS": "1",
           # a Ray node given SIGTERM takes its time; the test's cluster is thrown away
           "READY_TIMEOUT": "180", "STOP_TIMEOUT": "5"}  # fmt: skip
    for k in ("RAY_ADDRESS", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        env.pop(k, None)
    script = str(REPO / "launch/local_cluster.sh")
    up = subprocess.run([script, "up"], env=env, capture_output=True, text=True, timeout=400)
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        for line in (state / "cluster.env").read_text().splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export ") :].partition("=")
                env[key] = value.strip("'\"")
        synth = subprocess.run(
            [str(REPO / ".venv/bin/vlpdist"), "shards", "synth", "configs/synth/tiny.yaml",
             "--out", "s3://vlpdist/world"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert synth.returncode == 0, synth.stderr[-3000:]
        yield env
    finally:
        subprocess.run([script, "down"], env=env, capture_output=True, text=True, timeout=300)


def submit(env, *extra: str, popen: bool = False):
    cmd = [str(REPO / "launch/ray_submit.sh"), *STUDY, *extra]
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def summary(out: str) -> dict:
    return json.loads(
        next(line for line in reversed(out.splitlines()) if line.startswith('{"study"'))
    )


def records(env, study: str) -> dict:
    store = _storage(env)
    root = f"s3://vlpdist/studies/{study}/results"
    return {u.rsplit("/", 1)[-1][:-5]: json.loads(store.read_text(u)) for u in store.ls(root)}


def _storage(env) -> Storage:
    from vlpdist.config import StorageConfig

    return Storage(StorageConfig(endpoint_url=env["AWS_ENDPOINT_URL"], region="us-east-1",
                                 access_key_id=env["AWS_ACCESS_KEY_ID"],
                                 secret_access_key=env["AWS_SECRET_ACCESS_KEY"]))  # fmt: skip


def test_ray_job_submit_runs_the_study_and_a_bad_run_fails_alone(cluster):
    bad = "study.pretrain_sets={coco: [{url: coco_like}], bad: [{url: s3://vlpdist/nope}]}"
    job = submit(cluster, bad)
    out = job.stdout + job.stderr
    assert job.returncode == 0, out[-4000:]
    assert cluster["AWS_SECRET_ACCESS_KEY"] not in out  # settings travel, never printed
    s = summary(job.stdout)
    # ft-...-bad never starts: its pretraining failed, it is recorded as failed at once
    assert (s["runs"], s["executed"], s["skipped"]) == (6, 5, 0)
    recs = records(cluster, "tiny")
    status = {name: r["status"] for name, r in recs.items()}
    assert status == {
        "pre-visual_bert-coco": "done", "pre-visual_bert-bad": "failed",
        "ft-visual_bert-coco-vqa-full-50pct-s0": "done",
        "ft-visual_bert-scratch-vqa-full-50pct-s0": "done",
        "ft-visual_bert-text-only-vqa-full-50pct-s0": "done",
        "ft-visual_bert-bad-vqa-full-50pct-s0": "failed",
    }  # fmt: skip
    assert "s3://vlpdist/nope: no shard set there" in recs["pre-visual_bert-bad"]["error"]
    assert "pre-visual_bert-bad failed" in recs["ft-visual_bert-bad-vqa-full-50pct-s0"]["error"]
    export = "s3://vlpdist/studies/tiny/runs/pre-visual_bert-coco/export"
    assert _storage(cluster).exists(f"{export}/COMMITTED")
    ft = recs["ft-visual_bert-coco-vqa-full-50pct-s0"]
    assert ft["provenance"]["init_from"] == export and ft["drift"]["mean_angle_deg"] > 0
    assert ft["study"]["labels"]["pretrain"] == "coco"
    assert isinstance(ft["metric"]["shuffled"], float) and "image_shuffle_gap" in ft["metric"]
    assert recs["ft-visual_bert-text-only-vqa-full-50pct-s0"]["metric"]["text_only"] is True
    probe = recs["pre-visual_bert-coco"]["grounding"]
    assert probe["data"] == "s3://vlpdist/world/shards/coco_val_like" and probe["samples"] > 0

    again = submit(cluster, bad)  # a finished study: nothing runs again
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert summary(again.stdout)["executed"] == 0
    assert records(cluster, "tiny") == recs


def _train_workers(env) -> list[int]:
    """Ray Train worker processes of this cluster (its S3 endpoint is in their environment)."""
    mine = f"AWS_ENDPOINT_URL={env['AWS_ENDPOINT_URL']}".encode()
    out = subprocess.run(["pgrep", "-f", "ray::RayTrainWorker"], capture_output=True, text=True)
    pids = []
    for pid in map(int, out.stdout.split()):
        try:
            if mine in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                pids.append(pid)
        except OSError:
            continue
    return pids


def test_a_training_worker_killed_mid_pretraining_resumes_from_its_checkpoint(cluster):
    long = ("study.pretrain_overrides=[optim.total_steps=200, optim.warmup_steps=2, "
            "run.checkpoint_every=20, run.log_every=50]")  # fmt: skip
    job = submit(cluster, "study.name=kill", "study.tasks={}", "study.scratch=false",
                 "study.grounding=[]", long, popen=True)  # fmt: skip
    store = _storage(cluster)
    ckpts = "s3://vlpdist/studies/kill/runs/pre-visual_bert-coco/checkpoints"
    deadline, killed = time.time() + 400, None
    while time.time() < deadline and job.poll() is None and killed is None:
        if any(store.exists(f"{c}/COMMITTED") for c in store.ls(ckpts)):
            pids = _train_workers(cluster)
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
        time.sleep(0.2)
    out, _ = job.communicate(timeout=600)
    assert killed, "no training worker to kill before the run ended"
    assert job.returncode == 0, out[-4000:]
    rec = records(cluster, "kill")["pre-visual_bert-coco"]
    assert rec["status"] == "done" and rec["steps"] == 200
    resumes = rec["provenance"]["resumes"]
    assert resumes and resumes[0]["from"].startswith(ckpts)  # continued from a checkpoint
