"""`vlpdist report`: tables, CSV and plots rebuilt from hand-made result records."""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
from pathlib import Path

import pytest

from vlpdist.analysis import report as rp
from vlpdist.errors import VlpdistError
from vlpdist.storage import Storage, join

PNG = b"\x89PNG\r\n\x1a\n"
SETS = {"scratch": (0.0, 0.40), "coco": (1.0, 0.60), "cc": (0.5, 0.50)}  # (pretrain frac, base)
TASKS = {"vqa": ("vqa", "vqa_accuracy", 0.0), "snli_ve": ("snli_ve", "accuracy", 0.2)}
MODES = {"full": 0.0, "frozen": -0.1}
FRACTIONS = {1.0: 0.0, 0.1: -0.05}
SEEDS = {0: 0.0, 1: 0.01, 2: 0.035}
FAILED = ("scratch", "snli_ve", "frozen", 0.1, 2)  # this run is recorded as failed


def _labels(pretrain, task, mode, frac, seed, arch="visual_bert") -> dict:
    return {"arch": arch, "pretrain": pretrain, "pretrain_fraction": SETS[pretrain][0],
            "task": task, "mode": mode, "train_fraction": frac, "seed": seed}  # fmt: skip


def _drift(layers: int) -> dict:
    """The drift field of vlpdist.analysis.drift.summary; `value` has an undefined angle."""
    per = {w: {"l1": [0.1 * (i + 1) for i in range(layers)],
               "angle_deg": [1.0 + i for i in range(layers)]}
           for w in ("query", "key", "value", "output")}  # fmt: skip
    per["value"]["angle_deg"][0] = None
    single = {"layers": list(range(layers)), "mean_l1": 0.25, "mean_angle_deg": 2.5,
              "weights": per}  # fmt: skip
    return {"arch": "visual_bert", "streams": {"single": single}, "mean_l1": 0.2,
            "mean_angle_deg": 2.5}  # fmt: skip


def grid_records(drift: bool = False) -> list[dict]:
    out = []
    for pretrain, (_, base) in SETS.items():
        for task, (kind, metric, t_off) in TASKS.items():
            for mode, m_off in MODES.items():
                for frac, f_off in FRACTIONS.items():
                    for seed, s_off in SEEDS.items():
                        lab = _labels(pretrain, task, mode, frac, seed)
                        name = f"ft-{pretrain}-{task}-{mode}-{frac}-s{seed}"
                        if (pretrain, task, mode, frac, seed) == FAILED:
                            out.append({"run": name, "kind": "finetune", "status": "failed",
                                        "error": "worker died: CUDA OOM",
                                        "study": {"labels": lab}})  # fmt: skip
                            continue
                        value = base + t_off + m_off + f_off + s_off
                        rec = {"run": name, "kind": "finetune", "task": kind,
                               "arch": "visual_bert", "mode": mode, "fraction": frac,
                               "seed": seed, "status": "done",
                               "metric": {"name": metric, "value": value, "step": 10},
                               "study": {"labels": lab, "run_s": 1.0}}  # fmt: skip
                        if drift and pretrain != "scratch":
                            rec["drift"] = _drift(4)
                        out.append(rec)
    for pretrain in ("coco", "cc", "ghost"):  # pretraining runs; "ghost" was never fine-tuned
        lab = {"arch": "visual_bert", "pretrain": pretrain, "pretrain_fraction": 1.0}
        out.append({"run": f"pre-{pretrain}", "kind": "pretrain", "status": "done",
                    "metric": {"name": "loss", "value": 3.25}, "study": {"labels": lab}})  # fmt: skip
    return out


def some(records: list[dict], **want) -> list[dict]:
    """The fine-tuning records whose labels match `want`."""
    return [r for r in records if r["kind"] == "finetune"
            and all(r["study"]["labels"][k] == v for k, v in want.items())]  # fmt: skip


def write_records(root: Path | str, records: list[dict]) -> None:
    storage = Storage()
    for rec in records:
        storage.write_text(join(str(root), "results", f"{rec['run']}.json"), json.dumps(rec))


def _matching(records, row) -> list[dict]:
    """Fine-tuning records of one CSV row, found from the records' own labels."""
    out = []
    for r in records:
        lab = r["study"]["labels"]
        if r["kind"] != "finetune":
            continue
        key = (lab["arch"], lab["mode"], lab["train_fraction"], lab["pretrain"],
               lab["pretrain_fraction"], lab["task"])  # fmt: skip
        want = (row["arch"], row["mode"], float(row["train_fraction"]), row["pretrain"],
                float(row["pretrain_fraction"]), row["task"])  # fmt: skip
        if key == want:
            out.append(r)
    return out


def test_tables_csv_and_plots(tmp_path):
    records = grid_records()
    write_records(tmp_path / "study", records)
    result = rp.report(str(tmp_path / "study"))
    out = tmp_path / "study" / "report"
    assert result["markdown"].endswith("report/report.md") and (out / "report.md").exists()
    assert result["tables"] == 1 * 2 * 2  # arch x mode x train fraction

    tabs = rp.tables(records)
    assert [(t.mode, t.train_fraction) for t in tabs] == [
        ("full", 1.0), ("full", 0.1), ("frozen", 1.0), ("frozen", 0.1)
    ]  # fmt: skip
    for t in tabs:
        assert t.tasks == ["snli_ve", "vqa"]
        assert [label for label, _ in t.rows] == ["scratch", "cc (50%)", "coco"]  # no "ghost"
        assert t.metrics == {"snli_ve": "accuracy", "vqa": "vqa_accuracy"}

    # coco, vqa, full, 100%: 0.600, 0.610, 0.635 -> mean 0.615, sample std 0.018028
    cell = dict(tabs[0].rows)["coco"]["vqa"]
    assert cell.text() == "61.5 ± 1.8 (n=3)"
    assert cell.std == pytest.approx(0.0180278, abs=1e-6)
    md = (out / "report.md").read_text()
    assert "## visual_bert · full · 10% of train" in md
    assert "| coco | 81.5 ± 1.8 (n=3) |  | 61.5 ± 1.8 (n=3) |  |" in md  # no controls recorded

    # the failed run: counted apart from the seeds that finished, and named with its error
    frozen_small = tabs[3]
    failed = dict(frozen_small.rows)["scratch"]["snli_ve"]
    assert (failed.n, failed.failed) == (2, 1) and failed.text().endswith("(n=2, 1 failed)")
    assert frozen_small.failures == [("ft-scratch-snli_ve-frozen-0.1-s2", "worker died: CUDA OOM")]
    assert "`ft-scratch-snli_ve-frozen-0.1-s2`: worker died: CUDA OOM" in md

    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert list(rows[0]) == list(rp.CSV_COLUMNS)
    assert len(rows) == 4 * 3 * 2  # tables x rows x tasks
    assert sum(int(r["n"]) + int(r["failed"]) for r in rows) == 3 * 2 * 2 * 2 * 3
    for row in rows:
        runs = _matching(records, row)
        values = [r["metric"]["value"] for r in runs if r["status"] == "done"]
        assert int(row["n"]) == len(values) and int(row["failed"]) == len(runs) - len(values)
        assert float(row["mean"]) == pytest.approx(statistics.mean(values), abs=1e-12)
        assert float(row["std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
        assert row["metric"] == TASKS[row["task"]][1]

    names = [Path(p).name for p in result["plots"]]
    assert len([n for n in names if n.startswith("scores-")]) == 4
    assert sorted(n for n in names if n.startswith("lowres-")) == [
        f"lowres-visual_bert-{t}-{m}.png" for t in ("snli_ve", "vqa") for m in ("frozen", "full")
    ]  # fmt: skip
    assert not any(n.startswith("drift-") for n in names)  # no drift data in these records
    for p in result["plots"]:
        assert Path(p).read_bytes().startswith(PNG)
        assert f"![plots/{Path(p).name}](plots/{Path(p).name})" in md


def test_drift_plot_and_single_fraction(tmp_path):
    records = some(grid_records(drift=True), train_fraction=1.0)
    records[0]["drift"] = {"streams": {"single": {"query": {"l1": "bad"}}}}  # ignored, not fatal
    write_records(tmp_path, records)
    result = rp.report(str(tmp_path), str(tmp_path / "elsewhere"))
    names = [Path(p).name for p in result["plots"]]
    assert "drift-visual_bert.png" in names
    assert not any(n.startswith("lowres-") for n in names)  # one train fraction: no curve
    assert (tmp_path / "elsewhere" / "plots" / "drift-visual_bert.png").read_bytes()[:8] == PNG
    curves = rp.drift_curves(records)["visual_bert"]
    assert set(curves) == {("coco", "full"), ("coco", "frozen"), ("cc (50%)", "full"),
                           ("cc (50%)", "frozen")}  # fmt: skip
    assert curves[("coco", "full")]["single"]["angle_deg"] == [1.0, 2.0, 3.0, 4.0]
    assert curves[("coco", "full")]["single"]["l1"] == pytest.approx([0.1, 0.2, 0.3, 0.4])

    # the stream may also map weights directly; lists of other lengths are averaged per layer
    flat = {"query": {"l1": [1.0, 3.0], "angle_deg": [10.0, 30.0]},
            "key": {"l1": [2.0], "angle_deg": [20.0]}}  # fmt: skip
    rec = {**records[1], "drift": {"streams": {"text": flat, "co": [1, 2], "x": {"q": "no"}}}}
    (group,) = rp.drift_curves([rec])["visual_bert"].values()
    assert group == {"text": {"angle_deg": [15.0, 30.0], "l1": [1.5, 3.0]}}


def test_scratch_row_without_records_and_cell_texts():
    rec = {"run": "ft", "kind": "finetune", "status": "done",
           "metric": {"name": "micro_f1", "value": 0.5},
           "study": {"labels": {"arch": "vilbert", "pretrain": "coco", "pretrain_fraction": 1.0,
                                "task": "mmimdb", "mode": "full", "train_fraction": 1.0}}}  # fmt: skip
    (t,) = rp.tables([rec])
    assert [label for label, _ in t.rows] == ["scratch", "coco"]
    scratch = t.rows[0][1]["mmimdb"]
    assert (scratch.n, scratch.failed, scratch.text()) == (0, 0, "")
    assert t.rows[1][1]["mmimdb"].text() == "50.0 (n=1)"
    assert rp.Cell(None, None, 0, 2).text() == "failed (2 runs)"
    assert "| scratch |  |" in rp.markdown([t])
    assert rp.row_label("coco", 0.25) == "coco (25%)" and rp.row_label("scratch", 0.0) == "scratch"


def test_config_file_form_and_main(tmp_path, capsys):
    write_records(tmp_path / "out" / "x", some(grid_records(), train_fraction=1.0))
    cfg = tmp_path / "study.yaml"
    cfg.write_text(f"run:\n  output: {tmp_path / 'nowhere'}\nstudy:\n  name: x\n")
    args = argparse.Namespace(
        study=str(cfg), out=None, overrides=[f"run.output={tmp_path / 'out'}"]
    )
    assert rp.main(args) == 0
    printed = capsys.readouterr().out
    assert "## visual_bert · frozen · 100% of train" in printed and "wrote " in printed
    assert (tmp_path / "out" / "x" / "report" / "results.csv").exists()

    cfg.write_text(f"run:\n  output: {tmp_path / 'out'}\nstudy:\n  name: x\n")
    assert rp.report(str(cfg))["tables"] == 2


def test_errors(tmp_path):
    with pytest.raises(VlpdistError, match=r"no result records under .*/results: run `vlpdist study` first"):  # fmt: skip
        rp.report(str(tmp_path))
    with pytest.raises(VlpdistError, match="only storage"):
        rp.report(str(tmp_path), overrides=["run.output=/x"])


def test_remote_study_root(s3):
    root = s3.url("studies", "x")
    write_records(root, some(grid_records(), train_fraction=1.0, mode="full"))
    result = rp.report(root)
    storage = Storage()
    assert result["markdown"] == join(root, "report", "report.md")
    assert "## visual_bert · full · 100% of train" in storage.read_text(result["markdown"])
    assert storage.read_bytes(result["plots"][0])[:8] == PNG


def test_controls_beside_every_table(tmp_path):
    """Each run's score with shuffled regions beside it, the text-only control as a row, and
    "not grounded" where the shuffle costs no more than the spread over seeds."""
    gaps = {"coco": (0.10, 0.12, 0.11), "cc": (0.00, 0.02, -0.01), "scratch": (0.0, 0.0, 0.0)}
    records = []
    for pretrain, per_seed in [*gaps.items(), ("text-only", (None,) * 3)]:
        for seed, gap in enumerate(per_seed):
            value = 0.5 + 0.01 * seed
            metric = {"name": "vqa_accuracy", "value": value, "step": 10,
                      "shuffled": None if gap is None else value - gap,
                      "image_shuffle_gap": gap, "text_only": gap is None}  # fmt: skip
            lab = {"arch": "visual_bert", "pretrain": pretrain, "task": "vqa", "mode": "full",
                   "train_fraction": 0.1, "seed": seed,
                   "pretrain_fraction": 0.0 if pretrain in ("scratch", "text-only") else 1.0}  # fmt: skip
            records.append({"run": f"ft-{pretrain}-s{seed}", "kind": "finetune",
                            "status": "done", "metric": metric, "study": {"labels": lab}})  # fmt: skip
    write_records(tmp_path / "s", records)
    rp.report(str(tmp_path / "s"))
    (t,) = rp.tables(records)
    assert [label for label, _ in t.rows] == ["scratch", "text-only", "cc", "coco"]
    cells = {label: c["vqa"] for label, c in t.rows}
    assert cells["coco"].grounded is True and cells["coco"].gap == pytest.approx(0.11)
    assert cells["cc"].grounded is False  # a mean gap of 0.33 points, spread 3 points
    assert cells["scratch"].grounded is False and cells["text-only"].grounded is None
    md = (tmp_path / "s/report/report.md").read_text()
    assert "| pretraining | vqa | vqa · shuffled regions |" in md
    assert "| coco | 51.0 ± 1.0 (n=3) | 40.0 (-11.0) |" in md
    assert "| cc | 51.0 ± 1.0 (n=3) · not grounded | 50.7 (-0.3) |" in md
    assert "| text-only | 51.0 ± 1.0 (n=3) | no regions |" in md
    text = (tmp_path / "s/report/results.csv").read_text()
    rows = {r["pretrain"]: r for r in csv.DictReader(io.StringIO(text))}
    assert rows["coco"]["grounded"] == "true" and rows["cc"]["grounded"] == "false"
    assert rows["text-only"]["grounded"] == "" and float(rows["coco"]["gap_mean"]) == 0.11


def test_grounding_of_each_pretrained_model(tmp_path):
    records = grid_records()
    kinds = {"object": (0.6, 0.1), "color": (0.4, 0.2), "size": (0.5, 0.5), "count": (0.3, 0.3)}
    for rec in records:
        if rec["kind"] == "pretrain" and rec["study"]["labels"]["pretrain"] == "coco":
            rec["grounding"] = {"kinds": {k: {"true": t, "shuffled": s, "gap": t - s, "words": 9}
                                          for k, (t, s) in kinds.items()},
                                "itm": {"true": 0.9, "shuffled": 0.8}}  # fmt: skip
    write_records(tmp_path / "study", records)
    result = rp.report(str(tmp_path / "study"))
    md = (tmp_path / "study/report/report.md").read_text()
    assert "## Grounding of the pretrained models" in md
    assert "| coco | 60.0 / 10.0 (+50.0) | 40.0 / 20.0 (+20.0) | 50.0 / 50.0 (+0.0) |" in md
    section = md[md.index("## Grounding") :]
    assert "| coco |" in section and "| cc" not in section  # cc's export carries no probe
    plot = tmp_path / "study/report/plots/grounding-visual_bert.png"
    assert plot.read_bytes().startswith(PNG)
    assert any(u.endswith("plots/grounding-visual_bert.png") for u in result["plots"])


def test_done_and_failed_records_carry_the_grid_labels_alike():
    from vlpdist.config import Config
    from vlpdist.study.grid import RunSpec
    from vlpdist.study.results import failed, finished

    spec = RunSpec("ft-a", "finetune", Config(), None, labels={"arch": "vilbert", "seed": 1})
    done = finished(spec, {"run": "ft-a", "status": "done"}, 2.0, {"submitted": 0.0})
    lost = failed(spec, "worker died", 1.0, {"submitted": 0.0})
    assert rp.labels(done) == rp.labels(lost) == spec.labels
    assert done["study"].keys() == lost["study"].keys() and "labels" not in lost
