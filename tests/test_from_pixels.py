"""From pixels to a report: a few hundred small images drawn with PIL (some broken), their
captions and a JSON-lines task about them, built from the images with a recipe (extraction
with random weights on a local Ray), generated captions for the images (CCG), a tiny study
on that task (pretrained on those captions, and from scratch), and its report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import images as drawn
import pytest

from vlpdist.config import Recipe, from_dict
from vlpdist.errors import SourceError
from vlpdist.shards.build import build
from vlpdist.shards.reader import iter_samples
from vlpdist.storage import Storage

pytestmark = pytest.mark.slow  # processes and clusters: scheduled first (conftest)

REPO = Path(__file__).resolve().parents[1]
N = 240  # drawn images; the last 40 are the task's val split
EXTRACTOR = """extractor: detector
options: {input_size: 64, depths: [1, 1, 1, 1], widths: [16, 32, 64, 128], stem: 16,
          d_model: 32, layers: 1, queries: 12, min_boxes: 4, max_boxes: 8}
batch_size: 8
images_per_shard: 64
progress: false
"""


def _caption(objects: list[dict]) -> str:
    return "a picture of " + " and ".join(f"a {o['colour']} {o['shape']}" for o in objects)


@pytest.fixture(scope="module")
def made(tmp_path_factory, ray_local, minilm_dir):
    """The images, the shard sets built from them, and what was drawn."""
    tmp = tmp_path_factory.mktemp("pixels")
    root = tmp / "images"
    written = drawn.write_folder(str(root), N)
    (tmp / "extract.yaml").write_text(EXTRACTOR)
    drawn_ids = sorted(k for k, v in written.items() if v != "odd")
    captions = {"images": [], "annotations": []}
    train, val = [], []
    for n, image_id in enumerate(drawn_ids):
        objects = written[image_id]
        captions["annotations"].append(
            {"image_id": image_id, "id": n, "caption": _caption(objects)}
        )
        o = objects[0]
        (val if n >= N - 40 else train).append(
            {
                "image_id": image_id,
                "text": f"what colour is the {o['shape']}?",
                "label": o["colour"],
            }
        )
    train.append({"image_id": "garbage", "text": "what colour is the square?", "label": "red"})
    (tmp / "captions.json").write_text(json.dumps(captions))
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    shards = tmp / "shards"
    common = {"inputs": {"images": str(root)}, "shards": {"tokenizer": minilm_dir},
              "options": {"extractor": str(tmp / "extract.yaml")}}  # fmt: skip

    def recipe(**kw) -> Recipe:
        merged = {**common, **kw, "inputs": {**common["inputs"], **kw.get("inputs", {})},
                  "options": {**common["options"], **kw.get("options", {})}}  # fmt: skip
        return from_dict(Recipe, merged)

    manifests = {
        "captions": build(recipe(source="coco", dataset="drawn_captions",
                                 inputs={"captions": str(tmp / "captions.json")},
                                 options={"format": "official"}), str(shards / "captions")),
        # the same images again: the regions extracted for the captions are reused
        "shapes_train": build(recipe(source="jsonl", dataset="shapes", split="train",
                                     inputs={"texts": str(tmp / "train.jsonl")}),
                              str(shards / "shapes_train")),
        # or name the regions as features
        "shapes_val": build(recipe(source="jsonl", dataset="shapes", split="val",
                                   inputs={"texts": str(tmp / "val.jsonl"), "images": None,
                                           "features": str(shards / "images_regions")}),
                            str(shards / "shapes_val")),
    }  # fmt: skip
    return tmp, root, written, manifests, recipe


def test_recipes_build_from_pixels_and_reuse_the_regions(made):
    tmp, root, written, manifests, recipe = made
    cap = manifests["captions"]
    notes = "\n".join(cap["build_report"]["notes"])
    assert f"extracted from {root}" in notes and cap["cls_prob_dim"] == 92
    regions = str(tmp / "shards" / "images_regions")  # named after the images' folder
    reasons = {s["item"]: s["reason"] for s in
               json.loads((Path(regions) / "index.json").read_text())["build_report"]["skipped"]}  # fmt: skip
    assert set(reasons) == {"bomb", "empty", "garbage", "truncated"}
    # every drawn image has its captions and regions; odd files without captions are not samples
    samples = {s.meta["image_id"]: s for s in iter_samples(Storage(), str(tmp / "shards/captions"))}
    assert len(samples) == N and 4 <= len(samples["a/img0000"].feats) <= 8
    assert samples["b/img0001"].texts[0]["text"] == _caption(written["b/img0001"])
    task = manifests["shapes_train"]
    assert task["build_report"]["skipped"][0]["reason"] == "no features for this image"
    assert task["num_texts"] == N - 40
    assert manifests["shapes_val"]["num_texts"] == 40
    assert "reused" in "\n".join(task["build_report"]["notes"])  # not extracted again
    # other images, or another extractor, under the same regions: one line, nothing lost
    other = recipe(source="jsonl", split="val", inputs={"texts": str(tmp / "val.jsonl")},
                   options={"extractor": str(REPO / "configs/extract/grid.yaml")})  # fmt: skip
    with pytest.raises(SourceError, match="another extractor; use --overwrite"):
        build(other, str(tmp / "shards" / "shapes_val2"))
    with pytest.raises(SourceError, match="options.extractor: name the extraction config"):
        build(recipe(source="jsonl", inputs={"texts": str(tmp / "val.jsonl")},
                     options={"extractor": None}), str(tmp / "shards" / "shapes_val3"))  # fmt: skip


def test_a_tiny_study_on_your_task_from_pixels_to_report(made, ray_local, run_cli):
    tmp = made[0]
    # in-domain captions for your images (CCG): a captioner trained on the drawn captions
    # writes a caption for every image of the extracted regions
    run_cli("shards", "caption", str(REPO / "configs/caption/tiny.yaml"),
            f"data.sources=[{{url: {tmp / 'shards/captions'}}}]", "data.max_regions=8",
            f"caption.images={tmp / 'shards/images_regions'}", f"caption.out={tmp / 'shards/ccg'}",
            "caption.name=ccg_drawn", "optim.total_steps=20", "optim.warmup_steps=2",
            "run.checkpoint_every=20", f"run.output={tmp / 'runs'}", check=True)  # fmt: skip
    ccg = json.loads((tmp / "shards/ccg/index.json").read_text())
    assert ccg["num_samples"] == N + len(drawn.odd_images())  # every image that decoded
    study = tmp / "study.yaml"
    study.write_text(f"""
run: {{output: {tmp / "studies"}}}
study:
  name: shapes
  shards: {tmp / "shards"}
  pretrain_config: {REPO / "configs/pretrain/tiny.yaml"}
  finetune_config: {REPO / "configs/finetune/tiny.yaml"}
  pretrain_overrides: [optim.total_steps=20, optim.warmup_steps=2, run.checkpoint_every=10,
                       data.max_regions=8]
  finetune_overrides: [optim.total_steps=20, optim.warmup_steps=2, eval.every=10,
                       run.checkpoint_every=10, data.max_regions=8]
  architectures: [visual_bert]
  pretrain_sets: {{ccg: [{{url: ccg}}]}}
  tasks:
    shapes: {{task: label, train: [{{url: shapes_train}}], val: [{{url: shapes_val}}]}}
  modes: [full]
  train_fractions: [1.0]
  seeds: [0]
  controls: false  # the text-only control's own tests are test_study_cluster's
""")
    env = {"RAY_ADDRESS": ray_local}
    done = run_cli("study", str(study), env=env, check=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["runs"] == summary["executed"] == 3, summary
    results = tmp / "studies" / "shapes" / "results"
    status = {p.stem: json.loads(p.read_text())["status"] for p in results.glob("*.json")}
    assert set(status.values()) == {"done"}, status
    report = run_cli("report", str(study), check=True)
    assert report.returncode == 0
    md = (tmp / "studies" / "shapes" / "report" / "report.md").read_text()
    assert "shapes (accuracy)" in md
    for row in ("ccg", "scratch"):
        assert f"| {row} " in md, md
    assert os.path.exists(tmp / "studies" / "shapes" / "report" / "results.csv")
