"""The study grid and the results table: pure functions, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlpdist.config import Config, load
from vlpdist.study.grid import plan
from vlpdist.study.results import states, table

REPO = Path(__file__).resolve().parents[1]


def study(*overrides: str) -> Config:
    return load(Config, str(REPO / "configs/study/tiny.yaml"), [
        "study.shards=s3://bucket/world/shards", "run.output=s3://bucket/studies", *overrides
    ], command="study")  # fmt: skip


def test_grid_is_the_papers_layout():
    cfg = study(
        "study.architectures=[visual_bert, vilbert]",
        "study.pretrain_sets={coco: [{url: coco_like}], mix: [{url: coco_like, weight: 2}, {url: /data/cc}]}",
        "study.pretrain_fractions=[1.0, 0.5]", "study.modes=[full, frozen]",
        "study.train_fractions=[0.05, 0.25]", "study.seeds=[0, 1]",
        "study.tasks={vqa: {train: [{url: vqa_train}], val: [{url: vqa_val}]}, ve: {task: snli_ve, train: [{url: t}], val: [{url: v}]}}",
    )  # fmt: skip
    runs = plan(cfg)
    pre = [r for r in runs if r.kind == "pretrain"]
    ft = [r for r in runs if r.kind == "finetune"]
    assert len(pre) == 2 * 2 * 2  # arch x set x fraction
    # arch x (exports + scratch + text-only) x task x mode x fraction x seed
    assert len(ft) == 2 * (4 + 2) * 2 * 2 * 2 * 2
    assert len({r.name for r in runs}) == len(runs)
    assert runs[: len(pre)] == pre  # pretraining first
    mix = next(r for r in pre if r.name == "pre-vilbert-mix-50pct")
    srcs = [(s.url, s.weight) for s in mix.cfg.data.sources]
    assert srcs == [("s3://bucket/world/shards/coco_like", 2.0), ("/data/cc", 1.0)]
    assert mix.cfg.data.fraction == 0.5 and mix.cfg.model.arch == "vilbert"
    assert mix.cfg.run.output == "s3://bucket/studies/tiny/runs"
    assert mix.cfg.run.results is None  # the run writes its own record; the driver, the study's
    one = next(r for r in ft if r.name == "ft-vilbert-mix-50pct-ve-frozen-5pct-s1")
    assert one.depends == "pre-vilbert-mix-50pct"
    assert one.cfg.run.init_from == "s3://bucket/studies/tiny/runs/pre-vilbert-mix-50pct/export"
    c = one.cfg
    assert (c.data.task, c.model.freeze_base, c.data.fraction, c.run.seed) == (
        "snli_ve",
        True,
        0.05,
        1,
    )
    assert c.eval.sources[0].url == "s3://bucket/world/shards/v"
    scratch = [r for r in ft if r.labels["pretrain"] == "scratch"]
    assert len(scratch) == 2 * 2 * 2 * 2 * 2 and all(r.cfg.run.init_from is None for r in scratch)
    assert not any(r.cfg.data.text_only for r in scratch)
    control = [r for r in ft if r.labels["pretrain"] == "text-only"]  # the text-only control
    assert len(control) == len(scratch) and all(r.depends is None for r in control)
    assert all(r.cfg.data.text_only and r.cfg.run.init_from is None for r in control)
    assert not any(r.cfg.data.text_only for r in ft if r not in control)
    assert len(plan(study("study.controls=false"))) == len(plan(study())) - 1


def test_bad_study_configs_are_one_line():
    for reserved in ("scratch", "text-only"):
        with pytest.raises(Exception, match=f"'{reserved}' is a baseline's name"):
            study(f"study.pretrain_sets={{{reserved}: [{{url: x}}]}}")
    with pytest.raises(Exception, match="train and val"):
        study("study.tasks={vqa: {train: [{url: x}]}}")


def test_status_table_counts_every_state():
    runs = plan(study("study.controls=false"))
    records = {
        runs[0].name: {"status": "done", "metric": {"name": "loss", "value": 1.5}},
        runs[1].name: {"status": "failed", "error": "data.sources: s3://x: no shard set there"},
    }
    rows = states(runs, records, live=[runs[2].name])
    assert [r["state"] for r in rows] == ["done", "failed", "running"]
    text = table(rows)
    assert "loss=1.5000" in text and "no shard set there" in text
    assert text.splitlines()[-1].endswith("done 1  failed 1  running 1  pending 0")
    assert "2/3 finished" in text


def test_paper_mini_is_the_papers_whole_study():
    """configs/study/paper_mini.yaml: both architectures x the paper's pretraining sets and
    scratch x the four tasks x full/frozen x 10%/100% x 3 seeds, and the text-only control."""
    cfg = load(Config, str(REPO / "configs/study/paper_mini.yaml"), command="study")
    runs = plan(cfg)
    pre = {r.name for r in runs if r.kind == "pretrain"}
    sets = ("coco", "vqa_p", "cc", "cc_small", "ccg")
    assert pre == {f"pre-{a}-{s}" for a in ("visual_bert", "vilbert") for s in sets}
    fine = {r.name for r in runs if r.kind == "finetune"}
    for arch in ("visual_bert", "vilbert"):
        for init in (*sets, "scratch", "text-only"):
            for task in ("vqa", "vizwiz", "snli_ve", "mmimdb"):
                for mode in ("full", "frozen"):
                    for frac in ("10pct", "100pct"):
                        for seed in range(3):
                            assert f"ft-{arch}-{init}-{task}-{mode}-{frac}-s{seed}" in fine
    assert len(fine) == 2 * 7 * 4 * 2 * 2 * 3
