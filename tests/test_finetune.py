"""`vlpdist finetune` as real processes: from an export or from scratch, full or frozen, a
train fraction, val metric, best checkpoint, the result record, and bad input as one line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from vlpdist.models.export import load_pretrained

pytestmark = pytest.mark.slow  # processes and clusters: scheduled first (conftest)

REPO = Path(__file__).resolve().parents[1]


def pretrain_args(world: Path, output: str, *extra: str) -> list[str]:
    return [
        "pretrain", str(REPO / "configs/pretrain/tiny.yaml"),
        f"data.sources=[{{url: {world / 'coco_like'}}}]", f"run.output={output}",
        "optim.total_steps=6", "optim.warmup_steps=2", "run.checkpoint_every=3", *extra,
    ]  # fmt: skip


def finetune_args(world: Path, output: str, *extra: str) -> list[str]:
    return [
        "finetune", str(REPO / "configs/finetune/tiny.yaml"),
        f"data.sources=[{{url: {world / 'vqa_train'}}}]",
        f"eval.sources=[{{url: {world / 'vqa_val'}}}]", f"run.output={output}",
        "optim.total_steps=8", "optim.warmup_steps=2", "eval.every=4", "run.checkpoint_every=4",
        "run.log_every=2",
        *extra,
    ]  # fmt: skip


def ok(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def one_line_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    err = [line for line in lines if line.startswith("vlpdist: error:")]
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


@pytest.fixture(scope="module")
def export(world, tmp_path_factory, run_cli) -> Path:
    out = tmp_path_factory.mktemp("pre")
    ok(run_cli(*pretrain_args(world, str(out))))
    return out / "tiny/export"


def encoder_state(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}


@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_finetune_from_the_export_full_and_frozen(world, export, tmp_path, run_cli, mode):
    frozen = mode == "frozen"
    r = ok(run_cli(*finetune_args(world, str(tmp_path), f"run.init_from={export}",
                                  f"model.freeze_base={str(frozen).lower()}",
                                  "data.fraction=0.25")))  # fmt: skip
    rec = json.loads(Path(r["record"]).read_text())
    assert rec["kind"] == "finetune" and rec["mode"] == mode and rec["task"] == "vqa"
    assert rec["train_units"] == math.ceil(0.25 * 144)  # 144 questions in vqa_train
    assert [e["step"] for e in rec["evals"]] == [4, 8]
    assert all(e["n"] == 72 for e in rec["evals"])  # every val question, once
    best = max(rec["evals"], key=lambda e: e["vqa_accuracy"])
    assert (
        rec["metric"]["name"] == "vqa_accuracy" and rec["metric"]["value"] == best["vqa_accuracy"]
    )
    assert 0 <= rec["metric"]["value"] <= 1
    for e in rec["evals"]:  # every evaluation also with regions shuffled between samples
        assert e["image_shuffle_gap"] == e["vqa_accuracy"] - e["vqa_accuracy_shuffled"]
    assert rec["metric"]["shuffled"] == best["vqa_accuracy_shuffled"]
    assert rec["metric"]["image_shuffle_gap"] == best["image_shuffle_gap"]
    assert rec["metric"]["text_only"] is False
    assert rec["provenance"]["init_from"] == str(export)
    assert rec["provenance"]["init_from_run"] == str(export.parent)
    assert [s["url"] for s in rec["provenance"]["eval_shards"]] == [str(world / "vqa_val")]
    assert set(rec["throughput"]) >= {"samples_per_s", "tokens_per_s", "data_wait_fraction"}
    assert "mfu" not in rec["throughput"]  # no peak FLOP/s on a CPU
    logs = tmp_path / "tiny-vqa/logs"
    kinds = [json.loads(line)["kind"] for line in (logs / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("val") == 2 and kinds.count("train") >= 2
    assert any(p.name.startswith("events.out.tfevents") for p in logs.iterdir())

    best_dir = tmp_path / "tiny-vqa/best"
    assert (best_dir / "COMMITTED").exists()
    tuned = load_pretrained(str(best_dir))
    assert tuned.task == "vqa" and json.loads((best_dir / "config.json").read_text())["labels"]
    before, after = encoder_state(load_pretrained(str(export))), encoder_state(tuned)
    same = all(torch.equal(before[k], after[k]) for k in before)
    assert same is frozen  # frozen: the base is bit-identical; full: it moved


def test_finetune_from_scratch_and_resume_keeps_the_best(world, tmp_path, run_cli):
    r = ok(run_cli(*finetune_args(world, str(tmp_path), "run.init_from=null", "data.task=snli_ve",
                                  f"data.sources=[{{url: {world / 'snli_ve_train'}}}]",
                                  f"eval.sources=[{{url: {world / 'snli_ve_val'}}}]")))  # fmt: skip
    assert r["metric"]["name"] == "accuracy" and r["steps"] == 8
    again = ok(run_cli(*finetune_args(world, str(tmp_path), "run.init_from=null",
                                      "data.task=snli_ve", "optim.total_steps=8",
                                      f"data.sources=[{{url: {world / 'snli_ve_train'}}}]",
                                      f"eval.sources=[{{url: {world / 'snli_ve_val'}}}]")))  # fmt: skip
    assert again["resumed_from"].endswith("checkpoints/00000008")
    assert again["metric"] == r["metric"]  # the evaluation history came back with the state
    rec = json.loads(Path(again["record"]).read_text())
    assert rec["provenance"]["init_from"] is None and len(rec["provenance"]["resumes"]) == 1


def test_the_text_only_control_sees_no_regions(world, tmp_path, run_cli):
    r = ok(run_cli(*finetune_args(world, str(tmp_path), "run.init_from=null",
                                  "data.text_only=true")))  # fmt: skip
    rec = json.loads(Path(r["record"]).read_text())
    assert rec["metric"]["text_only"] is True and rec["config"]["data"]["text_only"] is True
    # no image, nothing for a shuffle to change: the same score, exactly
    assert all(e["image_shuffle_gap"] == 0.0 for e in rec["evals"]) and len(rec["evals"]) == 2


def test_bad_init_from_is_one_line(world, export, tmp_path, run_cli):
    missing = run_cli(*finetune_args(world, str(tmp_path), f"run.init_from={tmp_path / 'nope'}"))
    one_line_error(missing, "run.init_from", "no export there")
    partial = tmp_path / "partial"
    shutil.copytree(export, partial)
    (partial / "COMMITTED").unlink()
    one_line_error(run_cli(*finetune_args(world, str(tmp_path), f"run.init_from={partial}")),
                   str(partial), "incomplete export")  # fmt: skip
    other = run_cli(*finetune_args(world, str(tmp_path), f"run.init_from={export}",
                                   "model.arch=vilbert"))  # fmt: skip
    one_line_error(other, "visual_bert/tiny export", "model.arch=vilbert")
    both = run_cli(*finetune_args(world, str(tmp_path), f"run.init_from={export}",
                                  f"model.text_init={export}"))  # fmt: skip
    one_line_error(both, "model.text_init", "run.init_from")


def test_checkpoint_of_another_model_and_unwritable_storage_are_one_line(world, tmp_path, run_cli):
    ok(run_cli(*pretrain_args(world, str(tmp_path), "optim.total_steps=3")))
    other = run_cli(*pretrain_args(world, str(tmp_path), "model.sizes={num_layers: 3}"))
    one_line_error(other, "checkpoints/00000003", "another model", "model.sizes was {}")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    one_line_error(run_cli(*pretrain_args(world, str(blocker / "runs"))), str(blocker))


def test_wrong_command_for_the_task_is_one_line(world, tmp_path, run_cli):
    one_line_error(
        run_cli(*pretrain_args(world, str(tmp_path), "data.task=vqa")), "vlpdist finetune"
    )
    one_line_error(run_cli(*finetune_args(world, str(tmp_path), "eval.sources=[]")), "eval.sources")


# A fine-tuning run in a process that counts the reads of the shard sets' tokenizer files.
_COUNT_TOKENIZER_READS = """
import collections, json, sys
from vlpdist.shards.tokenize import TOKENIZER_DIR
from vlpdist.storage import Storage
reads = collections.Counter()
def counted(name):
    original = getattr(Storage, name)
    def read(self, url, *args, **kw):
        if f"/{TOKENIZER_DIR}/" in url:
            reads[url.rsplit("/", 1)[-1]] += 1
        return original(self, url, *args, **kw)
    setattr(Storage, name, read)
for name in ("get_file", "read_bytes", "open_read"):
    counted(name)
from vlpdist.cli import main
code = main(sys.argv[1:])
print(json.dumps(reads))
sys.exit(code)
"""


def test_the_tokenizer_is_fetched_once_per_process(world, tmp_path):
    """The eval loader and the exports use the files the train loader fetched."""
    import subprocess
    import sys

    args = finetune_args(world, str(tmp_path), "run.init_from=null", "optim.total_steps=2",
                         "eval.every=2", "run.checkpoint_every=0")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", _COUNT_TOKENIZER_READS, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    reads = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reads and set(reads.values()) == {1}, reads
