"""The report's findings: the paper's questions answered from hand-made result records whose
numbers are chosen so that each answer is known."""

from __future__ import annotations

import json

import pytest

from vlpdist.analysis import findings as fd
from vlpdist.analysis import report as rp
from vlpdist.storage import Storage, join

# (arch, mode, train fraction, pretraining set) -> mean score; seeds add 0, +0.5, +1 points
BASE = {"scratch": 0.40, "text-only": 0.38, "coco": 0.55, "vqa_p": 0.57, "cc": 0.50,
        "cc_small": 0.52, "ccg": 0.48}  # fmt: skip
SEED_OFFSETS = (0.0, 0.005, 0.01)


def _score(arch, mode, frac, pretrain):
    value = BASE[pretrain]
    if frac == 1.0 and pretrain not in ("scratch", "text-only"):
        value -= 0.05  # pretraining helps less with all the training data
    if frac == 1.0:
        value += 0.10
    if arch == "vilbert":
        value -= 0.03
    if mode == "frozen" and pretrain == "coco":
        value += 0.05  # frozen, coco is the best set; fine-tuned, vqa_p is
    return value


def records(seeds=SEED_OFFSETS, sets=BASE, archs=("visual_bert", "vilbert"), fracs=(0.1, 1.0),
            gap=0.10) -> list[dict]:  # fmt: skip
    out = []
    for arch in archs:
        for mode in ("full", "frozen"):
            for frac in fracs:
                for pretrain in sets:
                    for seed, off in enumerate(seeds):
                        value = _score(arch, mode, frac, pretrain) + off
                        text_only = pretrain == "text-only"
                        g = None if text_only else gap if pretrain != "scratch" else 0.0
                        metric = {"name": "vqa_accuracy", "value": value,
                                  "shuffled": None if text_only else value - g,
                                  "image_shuffle_gap": g, "text_only": text_only}  # fmt: skip
                        lab = {"arch": arch, "pretrain": pretrain, "task": "vqa", "mode": mode,
                               "train_fraction": frac, "seed": seed,
                               "pretrain_fraction": 0.0 if pretrain in ("scratch", "text-only")
                               else 1.0}  # fmt: skip
                        out.append({"run": f"ft-{arch}-{mode}-{frac}-{pretrain}-s{seed}",
                                    "kind": "finetune", "status": "done", "metric": metric,
                                    "study": {"labels": lab}})  # fmt: skip
    return out


def _by_question(recs) -> dict[str, fd.Finding]:
    return {f.question: f for f in fd.findings(rp.tables(recs))}


def test_each_question_answered_with_its_numbers():
    found = _by_question(records())
    domain = found["Does pretraining on data close to the task's domain help most?"]
    # 2 archs x 2 modes x 2 fractions; vqa_p (or frozen coco) beats cc by 7-12 points
    assert domain.comparisons == 8
    assert domain.sentence.startswith(
        "in-domain pretraining (the better of coco and vqa_p) beats out-of-domain cc: "
        "in-domain ahead in 8, cc ahead in 0, level in 0 of 8 comparisons; mean in-domain - cc"
    )
    assert "8 of 8 beyond the spread over seeds" in domain.sentence
    # 8 in-domain and 8 cc cells, counted once however many comparisons they are in
    assert "16 of the 16 scores compared are grounded" in domain.sentence
    bigger = found["Is bigger pretraining data always better?"]
    assert bigger.sentence.startswith(
        "cc_small beats cc: cc ahead in 0, cc_small ahead in 8, level in 0 of 8 comparisons; "
        "mean cc - cc_small -2.0 points (8 of 8 beyond"
    )
    generated = found["Do generated in-domain captions beat out-of-domain text?"]
    assert generated.sentence.startswith(
        "cc beats generated in-domain captions (ccg): ccg ahead in 0, cc ahead in 8"
    )
    low = found["Does pretraining help more when the downstream data is scarce?"]
    # the best set's gain over scratch: 17 points at 10%, 12 at 100% (coco frozen: 20 / 15)
    assert low.comparisons == 4
    assert low.sentence.startswith(
        "the best set's gain over scratch at 10% beats its gain at 100%: 10% ahead in 4, "
        "100% ahead in 0, level in 0 of 4 comparisons; mean 10% - 100% +5.0 points"
    )
    arch = found["VisualBERT or ViLBERT?"]
    assert arch.sentence.startswith(
        "VisualBERT (its best set) beats ViLBERT (its best set): VisualBERT ahead in 4, "
        "ViLBERT ahead in 0, level in 0 of 4 comparisons; mean VisualBERT - ViLBERT +3.0 points"
    )
    agree = found["Do the best fine-tuned and the best frozen-base pretraining agree?"]
    assert agree.sentence.startswith(
        "The best pretraining set fine-tuned and frozen is the same in 0 of 4 contexts"
    )
    assert "visual_bert · 10% · vqa: vqa_p 57.5 / coco 60.5" in agree.sentence
    controls = found["Do the models use the image at all?"]
    assert controls.sentence.startswith(
        "the best pretrained model beats the text-only control: pretrained ahead in 8, "
        "text-only ahead in 0"
    )


def test_level_scores_count_for_neither_side():
    """Two runs stuck on the same constant answer are level, not a loss: the verdict and
    the mean agree."""
    recs = records(sets=("scratch", "coco", "cc"), archs=("visual_bert",), fracs=(0.1,))
    for r in recs:  # frozen: coco and cc give the same scores
        lab = r["study"]["labels"]
        if lab["mode"] == "frozen" and lab["pretrain"] in ("coco", "cc"):
            r["metric"]["value"] = 0.5 + 0.005 * lab["seed"]
    domain = _by_question(recs)["Does pretraining on data close to the task's domain help most?"]
    assert (
        "in-domain ahead in 1, cc ahead in 0, level in 1 of 2 comparisons; mean in-domain - cc +2.5 points"
        in domain.sentence
    )
    assert domain.sentence.startswith("in-domain pretraining (the better of coco and vqa_p) beats")
    recs = [r for r in recs if r["study"]["labels"]["mode"] == "frozen"]
    domain = _by_question(recs)["Does pretraining on data close to the task's domain help most?"]
    assert domain.sentence.startswith(
        "neither in-domain pretraining (the better of coco and vqa_p) nor out-of-domain cc wins"
    )


def test_ungrounded_scores_are_called_language_priors():
    found = _by_question(records(gap=0.0))
    domain = found["Does pretraining on data close to the task's domain help most?"]
    assert "None of these scores is grounded" in domain.sentence
    assert "language priors, not visio-linguistic transfer" in domain.sentence


def test_what_the_study_lacks_and_a_single_seed():
    found = _by_question(records(seeds=(0.0,), sets=("scratch", "coco", "cc"),
                                 archs=("visual_bert",), fracs=(0.1,)))  # fmt: skip
    assert found["Is bigger pretraining data always better?"].sentence == (
        "Not in this study: it needs cc and cc_small."
    )
    assert found["VisualBERT or ViLBERT?"].comparisons == 0
    assert found["Does pretraining help more when the downstream data is scarce?"].sentence == (
        "Not in this study: it needs scratch and two train fractions."
    )
    domain = found["Does pretraining on data close to the task's domain help most?"]
    assert "one seed each, so no spread to judge by" in domain.sentence
    assert domain.comparisons == 2


@pytest.mark.parametrize("within", [True, False])
def test_beyond_the_spread_is_the_two_stds_together(within):
    a = rp.Cell(0.60, 0.02, 3, 0)
    b = rp.Cell(0.57 if within else 0.55, 0.02, 3, 0)  # 3 or 5 points apart, stds 2 + 2
    c = fd.Comparison(("visual_bert", "full", 1.0, "vqa"), "a", "b", a, b)
    assert c.beyond_spread is (not within)


def test_report_ends_with_the_findings(tmp_path):
    root = str(tmp_path / "study")
    for rec in records():
        Storage().write_text(join(root, "results", f"{rec['run']}.json"), json.dumps(rec))
    rp.report(root)
    md = (tmp_path / "study/report/report.md").read_text()
    assert md.index("## Findings") > md.index("| pretraining | vqa |")
    section = md[md.index("## Findings") :]
    for question in _by_question(records()):
        assert f"- **{question}** " in section
