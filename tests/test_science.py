"""The science check: on the synthetic world, with 10% of the VQA-like task's training
questions, pretraining on the in-domain captions beats no pretraining and the text-only
control by more than the spread over seeds, and loses more than that spread when the
regions are shuffled. It runs the demo study's own settings (configs/study/demo.yaml) on the
demo's world, reduced to VisualBERT, full fine-tuning, in-domain captions vs scratch, three
seeds. What the margin measures is written in the README ("The science check"): the
pretrained model reaches the question prior from few examples; neither model grounds its
answers in the regions at this size."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# Does not hold, so it is not run (it costs over two minutes of the suite's budget). Its
# first half holds since every seed draws its own dropout masks and batches are trimmed
# (commit 5a65469): coco 27.82 / 28.90 / 27.82 vs scratch 22.83 / 22.83 / 20.15, margin 6.2
# points against a spread of 2.7. Its second half, the one issue 12 asks for, does not: the
# text-only control gets 27.82 / 25.48 / 25.13, so what in-domain pretraining adds is a
# language prior, and shuffling the regions costs nothing (README, "The science check").
# Run it by hand with `pytest --runxfail tests/test_science.py`.
@pytest.mark.xfail(reason="in-domain pretraining adds a language prior, not grounding (issue 12)",
                   run=False)  # fmt: skip
def test_in_domain_pretraining_beats_scratch_at_low_resource(tmp_path, run_cli):
    synth = run_cli(
        "shards", "synth", str(REPO / "configs/synth/demo.yaml"), "--out", str(tmp_path)
    )
    assert synth.returncode == 0, synth.stderr[-3000:]
    study = run_cli("study", str(REPO / "configs/study/demo.yaml"), f"study.shards={tmp_path}/shards",
                    f"run.output={tmp_path}/studies", "study.name=science",
                    "study.architectures=[visual_bert]", "study.pretrain_sets={coco: [{url: coco_like}]}",
                    "study.modes=[full]", timeout=1200)  # fmt: skip
    assert study.returncode == 0, study.stderr[-3000:]
    scores: dict[str, list[tuple[int, float]]] = {"coco": [], "scratch": [], "text-only": []}
    gaps: list[float] = []  # what shuffling the regions costs the in-domain model
    for path in (tmp_path / "studies/science/results").glob("ft-*.json"):
        rec = json.loads(path.read_text())
        assert rec["status"] == "done", rec.get("error")
        labels = rec["study"]["labels"]
        assert labels["train_fraction"] == 0.1
        scores[labels["pretrain"]].append((labels["seed"], rec["metric"]["value"]))
        if labels["pretrain"] == "coco":
            gaps.append(rec["metric"]["image_shuffle_gap"])
    coco = [v for _, v in sorted(scores["coco"])]
    scratch = [v for _, v in sorted(scores["scratch"])]
    assert len(coco) == len(scratch) == 3
    margin = statistics.mean(coco) - statistics.mean(scratch)
    spread = max(max(coco) - min(coco), max(scratch) - min(scratch))  # over seeds 0, 1, 2
    text_only = [v for _, v in sorted(scores["text-only"])]
    report = (f"coco {coco} vs scratch {scratch}: margin {margin:.4f}, spread {spread:.4f} "
              f"(text-only {text_only})")  # fmt: skip
    print(report, f"shuffle gaps {gaps}")
    assert margin > spread, report
    # grounded: beyond the text-only control and lost with another image's regions
    over_text = statistics.mean(coco) - statistics.mean(text_only)
    assert over_text > max(spread, max(text_only) - min(text_only)), report
    assert min(gaps) > spread, (report, gaps)
