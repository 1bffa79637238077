"""The science check: on the synthetic world, with 10% of the VQA-like task's training
questions, pretraining on the in-domain captions beats no pretraining by more than the
spread over seeds. It runs the demo study's own settings (configs/study/demo.yaml) on the
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


# Does not hold, so it is not run (it costs a minute and a half of the suite's budget): until
# resumes restored the generators exactly, DataLoader drew its base seed from the global
# generator that dropout draws from; with that accident removed, one of the three
# in-domain seeds stays below the question prior after 100 updates (coco 41.07 / 42.48 /
# 32.85 vs scratch 30.10 / 32.78 / 30.10: margin 7.8 points, spread 9.6). The margin was
# never robust (README, "The science check"); issue 12 replaces this check with one that
# asserts grounding against the text-only and shuffled-region controls on another world
# seed. Run it by hand with `pytest --runxfail tests/test_science.py`.
@pytest.mark.xfail(reason="in-domain vs scratch at 10% is within the spread over seeds (issue 12)",
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
    scores: dict[str, list[tuple[int, float]]] = {"coco": [], "scratch": []}
    for path in (tmp_path / "studies/science/results").glob("ft-*.json"):
        rec = json.loads(path.read_text())
        assert rec["status"] == "done", rec.get("error")
        labels = rec["study"]["labels"]
        assert labels["train_fraction"] == 0.1
        scores[labels["pretrain"]].append((labels["seed"], rec["metric"]["value"]))
    coco = [v for _, v in sorted(scores["coco"])]
    scratch = [v for _, v in sorted(scores["scratch"])]
    assert len(coco) == len(scratch) == 3
    margin = statistics.mean(coco) - statistics.mean(scratch)
    spread = max(max(coco) - min(coco), max(scratch) - min(scratch))  # over seeds 0, 1, 2
    report = f"coco {coco} vs scratch {scratch}: margin {margin:.4f}, spread {spread:.4f}"
    print(report)
    assert margin > spread, report
