"""`vlpdist pretrain` as real processes with DeepSpeed on CPU: learning, checkpoints with
commit markers, auto-resume at the exact next sample after SIGKILL, object storage."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port
from corrupt import copy_with_corrupt_sample

from vlpdist.storage import Storage

pytestmark = pytest.mark.slow  # processes and clusters: scheduled first (conftest)

REPO = Path(__file__).resolve().parents[1]


def args(world: Path, output: str, steps: int, *extra: str) -> list[str]:
    return [
        "pretrain", str(REPO / "configs/pretrain/tiny.yaml"),
        f"data.sources=[{{url: {world / 'coco_like'}}}]", f"run.output={output}",
        "data.batch_size=4", "deepspeed.global_batch_size=8", "data.max_regions=16",
        f"optim.total_steps={steps}", "optim.warmup_steps=2", "run.checkpoint_every=4",
        "run.log_every=1", *extra,
    ]  # fmt: skip


def result(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def trace(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pretrain_learns_and_keeps_the_last_checkpoints(world, tmp_path, run_cli):
    out = run_cli(*args(world, str(tmp_path / "runs"), 24, "optim.lr=3e-3"))
    r = result(out)
    assert r["steps"] == 24 and r["resumed_from"] is None
    from vlpdist.models.export import load_pretrained

    export = tmp_path / "runs/tiny/export"
    assert r["export"] == str(export) and (export / "COMMITTED").exists()
    model = load_pretrained(str(export))  # what fine-tuning starts from
    assert model.objectives == ("mlm", "mrc") and (export / "tokenizer.json").exists()
    tuned = load_pretrained(str(export), task="snli_ve")
    assert list(tuned.heads) == ["task"]
    ckpts = sorted(p.name for p in (tmp_path / "runs/tiny/checkpoints").iterdir())
    assert ckpts == ["00000020", "00000024"]  # run.keep_last = 2
    for name in ckpts:
        d = tmp_path / "runs/tiny/checkpoints" / name
        assert (d / "COMMITTED").exists() and (d / "config.yaml").exists()
        assert json.loads((d / "data_state.json").read_text())["step"] == int(name)
    # the loader's figures reach the logs and the record, every sample counted once
    logs = (tmp_path / "runs/tiny/logs/metrics.jsonl").read_text().splitlines()
    train = [m for m in map(json.loads, logs) if m["kind"] == "train"]
    assert len(train) == 24 and sum(m["data"]["samples"] for m in train) == 24 * 8
    assert all(m["data"]["bytes_read"] > 0 and m["data"]["requests"] > 0 for m in train)
    assert all(0 <= m["data_wait_fraction"] <= 1 for m in train)
    data = json.loads((tmp_path / "runs/tiny/result.json").read_text())["throughput"]["data"]
    assert data["samples"] == 24 * 8 and data["corrupt_samples"] == data["retries"] == 0
    assert data["skipped_shards"] == {} and data["fetch_s"] > 0 and data["decode_s"] > 0


def test_killed_three_times_ends_bitwise_equal_to_an_uninterrupted_run(world, tmp_path, run_cli):
    """Dropout on (the tiny flavor's 0.1): SIGKILL three times between checkpoints, rerun
    each time. The resumed runs consume exactly the reference samples and draw the same
    dropout masks, so the exported weights are bitwise those of the uninterrupted run, and
    the record lists every attempt."""
    steps = 16
    ref = result(run_cli(*args(world, str(tmp_path / "a"), steps, f"run.trace={tmp_path / 'ta'}")))
    assert ref["steps"] == steps
    cmd = [sys.executable, "-m", "vlpdist",
           *args(world, str(tmp_path / "b"), steps, f"run.trace={tmp_path / 'tb'}")]  # fmt: skip
    tb = tmp_path / "tb" / "rank0.jsonl"
    seen = 0
    for target in (6, 10, 14):  # a step after checkpoint 4, 8, 12: killed mid-update
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            lines = trace(tb) if tb.exists() else []
            if any(t["step"] >= target for t in lines[seen:]):
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
        seen = len(trace(tb))
    again = result(
        run_cli(*args(world, str(tmp_path / "b"), steps, f"run.trace={tmp_path / 'tb'}"))
    )
    assert again["steps"] == steps
    # after each restart, the samples the reference consumed from that checkpoint on
    lines, want = trace(tb), trace(tmp_path / "ta" / "rank0.jsonl")
    starts = [0] + [i for i in range(1, len(lines)) if lines[i]["step"] < lines[i - 1]["step"]]
    assert len(starts) == 4
    for a, b in zip(starts, [*starts[1:], len(lines)], strict=True):
        first = lines[a]["step"]
        ref_part = [(t["step"], t["keys"]) for t in want if t["step"] >= first]
        assert [(t["step"], t["keys"]) for t in lines[a:b]] == ref_part[: b - a]
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "a/tiny/export/model.safetensors")
    wb = load_file(tmp_path / "b/tiny/export/model.safetensors")
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert differ == [], f"{len(differ)} of {len(wa)} tensors differ"
    rec = json.loads((tmp_path / "b/tiny/result.json").read_text())
    attempts = rec["provenance"]["attempts"]
    assert [a["generation"] for a in attempts] == [1, 2, 3, 4]  # every start, none dropped
    assert attempts[0]["from"] is None and all(a["from"] for a in attempts[1:])
    assert len(rec["provenance"]["resumes"]) == 3


def test_a_corrupt_sample_in_a_loader_worker_is_one_line(world, tmp_path, run_cli):
    url, shard, _ = copy_with_corrupt_sample(world / "coco_like", tmp_path / "coco")
    out = run_cli("pretrain", str(REPO / "configs/pretrain/tiny.yaml"),
                  f"data.sources=[{{url: {url}}}]", f"run.output={tmp_path / 'r'}",
                  "data.num_workers=2", "data.on_corrupt=fail", "optim.total_steps=50")  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("vlpdist: error:")]
    assert len(errors) == 1 and f"{shard}: sample 1: tar header checksum" in errors[0]
    assert "Traceback" not in out.stderr and "DataLoader worker" not in out.stderr


def test_a_checkpoint_without_its_marker_is_ignored(world, tmp_path, run_cli):
    result(run_cli(*args(world, str(tmp_path / "r"), 8)))
    fake = tmp_path / "r/tiny/checkpoints/00000099"
    fake.mkdir()
    (fake / "data_state.json").write_text('{"step": 99}')
    r = result(run_cli(*args(world, str(tmp_path / "r"), 10)))
    assert r["resumed_from"].endswith("checkpoints/00000008") and r["steps"] == 10


def test_checkpoints_and_resume_on_s3(world, s3, run_cli):
    r = result(run_cli(*args(world, s3.url("runs"), 4)))
    assert r["run"] == s3.url("runs", "tiny")
    files = Storage().find(s3.url("runs", "tiny", "checkpoints", "00000004"))
    names = {f.rsplit("/", 1)[-1] for f in files}
    assert {"COMMITTED", "data_state.json", "config.yaml"} <= names and len(files) > 4
    again = result(run_cli(*args(world, s3.url("runs"), 6)))
    assert again["resumed_from"] == s3.url("runs", "tiny", "checkpoints", "00000004")
    exported = {f.rsplit("/", 1)[-1] for f in Storage().find(s3.url("runs", "tiny", "export"))}
    assert {"config.json", "model.safetensors", "tokenizer.json", "COMMITTED"} <= exported


def test_global_batch_that_cannot_be_kept_is_refused(world, tmp_path, run_cli):
    out = run_cli(*args(world, str(tmp_path / "x"), 4), "deepspeed.global_batch_size=12",
                  "data.batch_size=8")  # fmt: skip
    assert out.returncode == 2
    assert "deepspeed.global_batch_size: 12 is not a multiple of data.batch_size 8" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def launch(cli: list[str], port: int, ranks: int = 2, popen: bool = False):
    """`deepspeed --num_gpus N --module vlpdist ...`: N real processes on CPU (gloo). `port`:
    a free one, never a fixed number, so two suites on one machine do not collide."""
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(ranks),
           "--master_port", str(port), "--module", "vlpdist", *cli]  # fmt: skip
    if popen:  # its own process group: SIGKILL reaches the launcher and every rank
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def summary(proc) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"run"')]
    assert proc.returncode == 0 and len(lines) == 1, proc.stderr[-3000:]  # rank 0 only
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def two_rank_runs(world, tmp_path_factory) -> dict:
    """ZeRO-1 and ZeRO-3 runs of two ranks each, 4 updates, checkpoints at 2 and 4."""
    base = tmp_path_factory.mktemp("two")
    runs = {}
    for stage in (1, 3):
        out = base / f"z{stage}"
        cli = args(world, str(out), 4, f"deepspeed.zero_stage={stage}", "optim.warmup_steps=1",
                   "run.checkpoint_every=2", "model.sizes={dropout: 0.0, attention_dropout: 0.0}")  # fmt: skip
        port = free_port()
        runs[stage] = (out, summary(launch(cli, port=port)), port)
    return runs


def test_two_ranks_via_the_deepspeed_launcher_zero1_and_zero3_agree(two_rank_runs):
    losses = {}
    for stage, (out, s, port) in two_rank_runs.items():
        losses[stage] = [h["loss"] for h in s["history"]]
        # DeepSpeed's shared-memory segments of the job are gone from /dev/shm (dist.py)
        assert not glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{port}_*")
        assert (out / "tiny/export/model.safetensors").exists()  # ZeRO-3: gathered first
        shards = {p.name for p in (out / "tiny/checkpoints/00000004/state").iterdir()}
        assert sum("optim_states" in s for s in shards) == 2  # one optimizer shard per rank
    assert len(losses[1]) == 4
    assert losses[1] == pytest.approx(losses[3], rel=1e-4)


def test_resume_two_ranks_on_one_through_a_universal_checkpoint(world, two_rank_runs, tmp_path,
                                                                run_cli):  # fmt: skip
    """The ZeRO-1 run of two ranks, continued to 8 updates by two ranks and by one: the one
    rank converts the checkpoint and trains on exactly the same samples to the same weights."""
    from vlpdist.models.export import load_pretrained

    src = two_rank_runs[1][0]
    extra = ("deepspeed.zero_stage=1", "optim.warmup_steps=1", "run.checkpoint_every=2",
             "model.sizes={dropout: 0.0, attention_dropout: 0.0}")  # fmt: skip
    finals = {}
    for ranks in (2, 1):
        out = tmp_path / f"w{ranks}"
        shutil.copytree(src, out)
        tr = f"run.trace={tmp_path / f't{ranks}'}"
        if ranks == 2:
            r = summary(launch(args(world, str(out), 8, *extra, tr), port=free_port()))
        else:
            r = result(run_cli(*args(world, str(out), 8, *extra, tr)))
        assert r["resumed_from"].endswith("checkpoints/00000004") and r["steps"] == 8
        record = json.loads((out / "tiny/result.json").read_text())
        assert record["provenance"]["resumes"][-1]["universal"] is (ranks == 1)
        keys = {}
        for f in (tmp_path / f"t{ranks}").iterdir():
            for t in trace(f):
                keys.setdefault(t["step"], []).extend(t["keys"])
        finals[ranks] = (keys, load_pretrained(str(out / "tiny/export")).state_dict())
    assert sorted(finals[1][0]) == [5, 6, 7, 8]
    assert {k: sorted(v) for k, v in finals[1][0].items()} == {
        k: sorted(v) for k, v in finals[2][0].items()
    }  # the same samples to the same updates
    one, two = finals[1][1], finals[2][1]
    for name in two:  # the same weights after 4 more updates (fp32 sums in another order)
        assert torch.allclose(one[name], two[name], rtol=1e-4, atol=1e-5), name


def test_two_ranks_pretrain_then_finetune_on_s3_survive_a_kill(world, s3, tmp_path):
    """The issue's whole path: two DeepSpeed processes pretrain to S3 on loopback, then
    fine-tune from the S3 export; the fine-tuning job is SIGKILLed (launcher and ranks)
    after a checkpoint, rerun, and completes from it with its evaluation history."""
    runs = s3.url("runs")
    pre = summary(launch(args(world, runs, 4, "deepspeed.zero_stage=1"), port=free_port()))
    assert pre["export"] == s3.url("runs", "tiny", "export")
    tr = tmp_path / "trace"
    ft = ["finetune", str(REPO / "configs/finetune/tiny.yaml"),
          f"data.sources=[{{url: {world / 'vqa_train'}}}]",
          f"eval.sources=[{{url: {world / 'vqa_val'}}}]", f"run.output={runs}",
          f"run.init_from={pre['export']}", "data.batch_size=4", "deepspeed.global_batch_size=8",
          "data.max_regions=16", "optim.total_steps=8", "optim.warmup_steps=2", "eval.every=4",
          "run.checkpoint_every=4", "deepspeed.zero_stage=1", f"run.trace={tr}"]  # fmt: skip
    proc = launch(ft, port=free_port(), popen=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill during update 6
        if (tr / "rank0.jsonl").exists() and any(t["step"] == 6 for t in trace(tr / "rank0.jsonl")):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
    done = summary(launch(ft, port=free_port()))
    assert done["resumed_from"] == s3.url("runs", "tiny-vqa", "checkpoints", "00000004")
    store = Storage()
    record = json.loads(store.read_text(s3.url("runs", "tiny-vqa", "result.json")))
    assert [e["step"] for e in record["evals"]] == [4, 8]  # step 4's came back with the state
    assert record["provenance"]["init_from"] == pre["export"]
    assert record["provenance"]["resumes"][0]["from"] == done["resumed_from"]
    assert record["throughput"]["world_size"] == 2 and record["metric"]["value"] is not None
    assert store.exists(s3.url("runs", "tiny-vqa", "best", "COMMITTED"))
    assert store.exists(s3.url("runs", "tiny-vqa", "logs", "metrics.jsonl"))
