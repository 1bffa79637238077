"""Bad input to `vlpdist pretrain` / `finetune` is one line and exit 2 before any process
group: in the config layer (sizes, text length) or in the preflight (shard-set manifests, the
export), never a traceback on every rank once DeepSpeed has started."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vlpdist.config import Config, load
from vlpdist.engine.setup import preflight
from vlpdist.errors import VlpdistError

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = str(REPO / "configs/pretrain/tiny.yaml")
FINETUNE = str(REPO / "configs/finetune/tiny.yaml")


def pretrain(run_cli, world: Path, out: Path, *extra: str):
    return run_cli(
        "pretrain", PRETRAIN, f"data.sources=[{{url: {world / 'coco_like'}}}]",
        f"run.output={out}", *extra, timeout=120,
    )  # fmt: skip


def assert_fails_fast(proc, *needles: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stdout[-2000:] + err[-3000:]
    assert len(err.splitlines()) == 1 and err.startswith("vlpdist: error: "), err
    assert "Traceback" not in err
    # no process group and not even DeepSpeed imported: it announces its accelerator at import,
    # and torch.distributed prefixes every line of a rank that crashed with [rank0]
    both = proc.stdout + proc.stderr
    assert "[rank" not in both and "DeepSpeed" not in both and "accelerator" not in both, both
    for needle in needles:
        assert needle in err, err


def copy_set(world: Path, name: str, dst: Path, **manifest_changes) -> Path:
    """A shard set that shares `name`'s shards (links) but has its own, edited manifest."""
    src = world / name
    dst.mkdir(parents=True)
    for entry in os.listdir(src):
        if entry != "index.json":
            os.symlink(src / entry, dst / entry)
    manifest = json.loads((src / "index.json").read_text())
    for key, value in manifest_changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    (dst / "index.json").write_text(json.dumps(manifest))
    return dst


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.sizes.num_layerz=2", "model.sizes.num_layerz"),
        ("model.sizes.num_layers=abc", "model.sizes.num_layers"),
        ("model.sizes.num_layers=2.5", "model.sizes.num_layers"),
        ("model.sizes.num_heads=3", "model.sizes.num_heads"),  # 64 wide: no 3 heads
        ("data.max_text_tokens=200", "data.max_text_tokens"),  # tiny has 128 positions
    ],
)
def test_a_model_that_cannot_be_built_is_one_line_before_any_rank(
    run_cli, world, tmp_path, override, key
):
    proc = pretrain(run_cli, world, tmp_path / "runs", override)
    assert_fails_fast(proc, f"command line override '{key}': {key}: ")
    assert not (tmp_path / "runs").exists()  # stopped before the preflight's write probe


def test_mrc_on_a_set_without_detector_classes_names_the_set(run_cli, world, tmp_path):
    nocls = copy_set(world, "coco_like", tmp_path / "nocls", cls_prob_dim=None)
    proc = pretrain(run_cli, world, tmp_path / "runs", f"data.sources=[{{url: {nocls}}}]")
    assert_fails_fast(proc, "model.objectives: mrc", str(nocls), "cls_prob_dim")
    # in a mix too: every training set must have the classes, not just the first
    mix = f"data.sources=[{{url: {world / 'coco_like'}}}, {{url: {nocls}}}]"
    assert_fails_fast(pretrain(run_cli, world, tmp_path / "runs", mix), str(nocls))


def check(path: str, command: str, *overrides: str):
    return preflight(load(Config, path, list(overrides), command=command))


def test_without_mrc_a_set_without_detector_classes_is_fine(world, tmp_path):
    nocls = copy_set(world, "coco_like", tmp_path / "nocls", cls_prob_dim=None)
    pre = check(PRETRAIN, "pretrain", f"data.sources=[{{url: {nocls}}}]",
                "model.objectives=[mlm, mfr]", f"run.output={tmp_path}")  # fmt: skip
    assert pre.run_url.startswith(str(tmp_path))


def test_sets_that_do_not_fit_the_first_training_set_are_named(world, tmp_path):
    wide = copy_set(world, "vqa_val", tmp_path / "wide", feature_dim=64)
    with pytest.raises(VlpdistError, match=f"eval.sources: {wide}: its feature_dim differs"):
        check(FINETUNE, "finetune", f"data.sources=[{{url: {world / 'vqa_train'}}}]",
              f"eval.sources=[{{url: {wide}}}]", f"run.output={tmp_path}", "run.init_from=null")  # fmt: skip
    other_tok = copy_set(world, "cc_like", tmp_path / "tok", tokenizer={"sha256": "0" * 64})
    mix = f"data.sources=[{{url: {world / 'coco_like'}}}, {{url: {other_tok}}}]"
    with pytest.raises(VlpdistError, match=f"data.sources: {other_tok}: its tokenizer_sha256"):
        check(PRETRAIN, "pretrain", mix, f"run.output={tmp_path}")
    classes = copy_set(world, "cc_like", tmp_path / "cls", cls_prob_dim=99)
    mix = f"data.sources=[{{url: {world / 'coco_like'}}}, {{url: {classes}}}]"
    with pytest.raises(VlpdistError, match=f"data.sources: {classes}: its cls_prob_dim"):
        check(PRETRAIN, "pretrain", mix, f"run.output={tmp_path}")


def test_an_export_rules_text_length_and_feature_dim(world, tmp_path):
    """From an export, its own sizes and dims count (model.sizes does not build it)."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "COMMITTED").write_text("ok")
    config = {"sizes": {"max_position": 32}, "dims": {"visual_dim": 32}}
    (export / "config.json").write_text(json.dumps(config))
    base = [f"data.sources=[{{url: {world / 'vqa_train'}}}]", f"run.output={tmp_path / 'runs'}",
            f"eval.sources=[{{url: {world / 'vqa_val'}}}]", f"run.init_from={export}"]  # fmt: skip
    with pytest.raises(VlpdistError, match=r"data.max_text_tokens 36 > the 32 positions of run"):
        check(FINETUNE, "finetune", *base)
    check(FINETUNE, "finetune", *base, "data.max_text_tokens=32")
    config["dims"]["visual_dim"] = 2048
    (export / "config.json").write_text(json.dumps(config))
    with pytest.raises(VlpdistError, match=r"takes 2048-d region features; data.sources"):
        check(FINETUNE, "finetune", *base, "data.max_text_tokens=32")
