"""Your own task as JSON lines: built over the features of a shard set (as `vlpdist shards
extract` writes one: samples without texts), its labels.json, the loader's targets, the
metrics, a short fine-tune of each kind, and a study that names such a task."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from public_fixtures import make_img, read_set, recipe, skips, write_lines

from vlpdist.config import Config, DataConfig, DataSource, load
from vlpdist.data.loader import Loader
from vlpdist.errors import SourceError, VlpdistError
from vlpdist.metrics import ClassF1, MultiLabelF1, metric_for
from vlpdist.shards import schema
from vlpdist.shards.build import build
from vlpdist.shards.features import open_features
from vlpdist.shards.reader import inspect
from vlpdist.storage import Storage

REPO = Path(__file__).resolve().parents[1]
IMAGES = {f"img_{i:03d}": make_img(100 + i, n=3 + i % 3, classes=4 if i % 2 else None)
          for i in range(24)}  # fmt: skip
CLASSES = ("cat", "dog", "bird")
TAGS = ("indoor", "outdoor", "night")


def write_feature_set(out: Path, per_shard: int = 10) -> Path:
    """A committed shard set as `vlpdist shards extract` writes one: regions and image size,
    no texts. Plain tarfile and JSON: only the format is shared with vlpdist."""
    out.mkdir(parents=True)
    keys, shards = list(IMAGES), []
    for s, first in enumerate(range(0, len(keys), per_shard)):
        name = f"{s:06d}.tar"
        with tarfile.open(out / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key in keys[first : first + per_shard]:
                im = IMAGES[key]
                meta = {"image_id": key, "width": im.width, "height": im.height,
                        "source": "extract", "split": "images", "texts": []}  # fmt: skip
                sample = schema.Sample(key, im.feats.astype(np.float16), im.norm_boxes(), meta,
                                       None if im.cls_prob is None
                                       else im.cls_prob.astype(np.float16))  # fmt: skip
                for ext, data in schema.encode(sample).items():
                    if ext != "__key__":
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        shards.append({"name": name, "num_samples": len(keys[first : first + per_shard])})
    manifest = {"format": schema.FORMAT, "version": schema.VERSION, "dataset": "my_images",
                "source": "extract", "regions_only": True, "feature_dim": 16,
                "num_samples": len(keys), "shards": shards}  # fmt: skip
    (out / "index.json").write_text(json.dumps(manifest))
    return out


def records(kind: str, images: list[str], per_image: int = 2, seed: int = 0) -> list[str]:
    """Good lines of one kind: a text per image and per_image, with an id."""
    rng = np.random.default_rng(seed)
    out = []
    for i, image in enumerate(images):
        for j in range(per_image):
            rec = {
                "image_id": image,
                "text": f"what is in picture {i} number {j}",
                "id": f"{i}-{j}",
            }
            if kind == "label":
                rec["label"] = CLASSES[(i + j) % 3]
            elif kind == "labels":
                rec["labels"] = [TAGS[k] for k in range(3) if (i + j + k) % 2]
            else:
                rec["answers"] = [CLASSES[(i + int(rng.integers(2)) * j) % 3] for _ in range(10)]
            out.append(json.dumps(rec))
    return out


@pytest.fixture(scope="module")
def task(tmp_path_factory, minilm_dir) -> dict:
    """The feature set, and train/val shard sets of each kind built over it."""
    root = tmp_path_factory.mktemp("jsonl")
    feats = write_feature_set(root / "features")
    sets = {}
    for kind in ("answers", "label", "labels"):
        for split, images in (("train", list(IMAGES)[:16]), ("val", list(IMAGES)[16:])):
            write_lines(root / kind / f"{split}.jsonl", records(kind, images, seed=len(split)))
            out = root / "shards" / f"{kind}_{split}"
            build(recipe("jsonl", root / kind, minilm_dir, f"split={split}",
                         f"inputs.features={feats}"), str(out))  # fmt: skip
            sets[kind, split] = out
    return {"root": root, "features": feats, "sets": sets}


# ---------------------------------------------------------------- building


BAD = [
    '{"image_id": "img_000", "text": "a cat on a sofa", "label": "cat", "id": 7, "note": "x"}',
    "{not json",
    '["a list"]',
    '{"text": "no image", "label": "cat"}',
    '{"image_id": "img_001", "text": "  ", "label": "cat"}',
    '{"image_id": "img_001", "text": "no kind"}',
    '{"image_id": "img_001", "text": "two kinds", "label": "cat", "labels": ["cat"]}',
    '{"image_id": "img_001", "text": "another kind", "labels": ["cat"]}',
    '{"image_id": "img_001", "text": "a number", "label": 3}',
    '{"image_id": "img_001", "text": "bad id", "label": "dog", "id": true}',
    "",
    '{"image_id": "nowhere", "text": "no features", "label": "dog"}',
    '{"image_id": "img_002.jpg", "text": "by file name", "label": "bird"}',
    '{"image_id": "nowhere", "text": "no features either", "label": "cat"}',
]


def test_every_bad_line_is_a_counted_skip_with_its_line(task, tmp_path, minilm_dir):
    write_lines(tmp_path / "train.jsonl", BAD)
    with open(tmp_path / "train.jsonl", "ab") as f:
        f.write(b'{"image_id": "img_003", "text": "caf\xe9", "label": "cat"}\n')  # not UTF-8
    m = build(recipe("jsonl", tmp_path, minilm_dir, f"inputs.features={task['features']}"),
              str(tmp_path / "out"))  # fmt: skip
    assert set(skips(m)) == {
        ("line 2", "not JSON (Expecting property name enclosed in double quotes)", "train.jsonl:2"),
        ("line 3", "not a JSON object", "train.jsonl:3"),
        ("line 4", "no image_id (an integer or a non-empty string)", "train.jsonl:4"),
        ("line 5", "no text (a non-empty string)", "train.jsonl:5"),
        ("line 6", "no answers, label or labels (give exactly one)", "train.jsonl:6"),
        ("line 7", "label and labels given (give exactly one)", "train.jsonl:7"),
        ("line 8", "a labels record in a file of label records", "train.jsonl:8"),
        ("line 9", "label is not a non-empty string", "train.jsonl:9"),
        ("line 10", "id is not an integer or a non-empty string", "train.jsonl:10"),
        ("nowhere", "no features for this image", "train.jsonl:12"),
        ("nowhere", "no features for this image", "train.jsonl:14"),
        ("line 15", "not UTF-8 text", "train.jsonl:15"),
    }  # fmt: skip
    report = m["build_report"]
    assert report["read"] == 14 and report["written"] == 2 and report["texts"] == 2
    notes = report["notes"]
    assert "kind: label (from the first record naming one); fine-tune with data.task=label" in notes
    assert "ignored keys: 'note' (first on line 1)" in notes
    assert m["extra"]["task"] == "label" and m["extra"]["features"]["format"] == "shards"
    _, samples = read_set(tmp_path / "out")
    [text] = samples["img_000"].texts
    assert text["kind"] == "text" and text["label"] == "cat" and text["text_id"] == 7
    assert text["line"] == 1
    assert samples["img_002_jpg"].meta["image_id"] == "img_002.jpg"  # found by its stem
    shown = inspect(Storage(), str(tmp_path / "out"), n_samples=3)["samples"]
    assert {"kind": "text", "text": "a cat on a sofa", "label": "cat"}.items() <= (
        shown[0]["texts"][0].items()
    )
    assert json.loads((tmp_path / "out/labels.json").read_text()) == {
        "label": {"bird": 1, "cat": 1}
    }
    # the regions are the feature set's, exactly
    s, im = samples["img_000"], IMAGES["img_000"]
    np.testing.assert_array_equal(s.feats, im.feats.astype(np.float16))
    np.testing.assert_array_equal(s.boxes, im.norm_boxes())
    assert (s.meta["width"], s.meta["height"]) == (im.width, im.height) and s.cls_prob is None


def test_labels_json_and_kinds(task, tmp_path, minilm_dir):
    sets = task["sets"]
    counted = Counter(
        json.loads(line)["label"]
        for line in (task["root"] / "label/train.jsonl").read_text().splitlines()
    )
    labels = json.loads((sets["label", "train"] / "labels.json").read_text())
    assert labels == {"label": dict(counted)} and sum(counted.values()) == 32  # fmt: skip
    tags = json.loads((sets["labels", "train"] / "labels.json").read_text())
    assert set(tags) == {"labels"} and set(tags["labels"]) == set(TAGS)
    shown = inspect(Storage(), str(sets["labels", "train"]), n_samples=1)["samples"][0]["texts"]
    assert shown[0]["kind"] == "text" and set(shown[0]["labels"]) <= set(TAGS)
    answers = json.loads((sets["answers", "train"] / "labels.json").read_text())
    assert set(answers) == {"answers"} and answers["answers"]["normalization"] == "vqa-official"
    assert sum(answers["answers"]["counts"].values()) == 32
    _, samples = read_set(sets["answers", "train"])
    t = samples["img_000"].texts[0]
    assert t["kind"] == "question" and len(t["answers"]) == 10 and t["question_id"] == "0-0"
    # options.kind says the kind: a file of another kind is skipped line by line
    write_lines(tmp_path / "train.jsonl", records("labels", ["img_000", "img_001"]) +
                ['{"image_id": "img_002", "text": "one answer", "answers": ["cat"]}'])  # fmt: skip
    m = build(recipe("jsonl", tmp_path, minilm_dir, f"inputs.features={task['features']}",
                     "options.kind=answers"), str(tmp_path / "out"))  # fmt: skip
    assert {r for _, r, _ in skips(m)} == {"a labels record in a file of answers records"}
    assert len(skips(m)) == 4 and m["num_samples"] == 1
    notes = m["build_report"]["notes"]
    assert any(n.startswith("1 records have fewer than 4 answers") for n in notes), notes


def test_bad_inputs_are_one_line(task, tmp_path, minilm_dir):
    write_lines(tmp_path / "train.jsonl", records("label", ["img_000"]))
    cases = [
        (["inputs.texts={root}/missing.jsonl"], "missing.jsonl: file not found (inputs.texts)"),
        ([f"inputs.features={tmp_path}/nope"], "nope: features not found"),
        ([f"inputs.features={tmp_path}", "options.features_format=shards"],
         "index.json: not found (not a shard set, or its build never committed) "
         "(inputs.features)"),
        (["options.kind=classes"], "options.kind: 'classes' is not one of auto, answers, label"),
    ]  # fmt: skip
    for overrides, needle in cases:
        with pytest.raises(VlpdistError) as e:
            build(recipe("jsonl", tmp_path, minilm_dir, f"inputs.features={task['features']}",
                         *overrides), str(tmp_path / "out"))  # fmt: skip
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_shard_set_features_on_s3(task, s3):
    """Any storage URL: the set is detected by its index.json and read by byte ranges."""
    storage = Storage()
    for path in task["features"].iterdir():
        storage.put_file(str(path), s3.url("feats", path.name))
    store = open_features(storage, s3.url("feats"))
    assert store.fmt == "shards" and len(store) == len(IMAGES)
    for image_id in ("img_013", "img_013.jpg", "some/dir/img_013.png"):
        assert store.lookup(image_id) == "img_013"
    r, im = store.load("img_013"), IMAGES["img_013"]
    np.testing.assert_array_equal(r.feats, im.feats.astype(np.float16))
    np.testing.assert_array_equal(r.cls_prob, im.cls_prob.astype(np.float16))
    assert (r.width, r.height) == (im.width, im.height)
    with pytest.raises(SourceError, match="name one shard set directory"):
        open_features(Storage(), f"{task['root']}/*", "shards")


# ---------------------------------------------------------------- loader and metrics


def loader(url: Path, kind: str) -> Loader:
    cfg = DataConfig(sources=[DataSource(str(url))], task=kind, batch_size=32, num_workers=0,
                     answer_min_count=1)  # fmt: skip
    return Loader(cfg, None, rank=0, world_size=1)


def test_the_loader_targets_of_each_kind(task):
    sets = task["sets"]
    by_id = {}
    for kind in ("label", "labels", "answers"):
        train = loader(sets[kind, "train"], kind)
        batch = next(iter(train))
        texts = {}
        for line in (task["root"] / kind / "train.jsonl").read_text().splitlines():
            rec = json.loads(line)
            texts[rec["id"]] = rec
        assert sorted(batch.text_ids) == sorted(texts) and not batch.is_pad.any()
        by_id[kind] = (train.labels, batch, texts)
    labels, batch, texts = by_id["label"]
    assert labels == sorted(CLASSES)
    for row, tid in enumerate(batch.text_ids):
        assert batch.targets[row].item() == labels.index(texts[tid]["label"])
    labels, batch, texts = by_id["labels"]
    assert labels == sorted(TAGS)
    for row, tid in enumerate(batch.text_ids):
        want = [float(t in texts[tid]["labels"]) for t in labels]
        assert batch.targets[row].tolist() == want
    labels, batch, texts = by_id["answers"]
    for row, tid in enumerate(batch.text_ids):
        answers = texts[tid]["answers"]
        assert batch.answers[row] == answers
        for a in set(answers):  # soft score: min(#matches/3, 1) over the leave-one-out subsets
            m = answers.count(a)
            want = (m * min((m - 1) / 3, 1) + (10 - m) * min(m / 3, 1)) / 10
            assert batch.targets[row, labels.index(a)].item() == pytest.approx(want)
    # a val split is scored with the train split's classes
    val = Loader(DataConfig(sources=[DataSource(str(sets["label", "val"]))], task="label",
                            answer_vocab=str(sets["label", "train"]), num_workers=0),
                 None, rank=0, world_size=1)  # fmt: skip
    assert val.labels == sorted(CLASSES)


def test_class_accuracy_and_macro_f1_by_hand():
    # classes bird cat dog; gold: cat cat dog bird bird bird; predicted: cat dog dog bird cat
    # bird; the last sample is a pad, never counted
    gold = np.array([1, 1, 2, 0, 0, 0, 1])
    pred = np.array([1, 2, 2, 0, 1, 0, 0])
    logits = np.eye(3)[pred]
    pad = np.array([0, 0, 0, 0, 0, 0, 1], bool)
    m = metric_for("label")
    m.update(logits, gold, pad)
    # bird: tp 2, fp 0, fn 1 -> 4/5; cat: tp 1, fp 1, fn 1 -> 2/4; dog: tp 1, fp 1, fn 0 -> 2/3
    macro = (4 / 5 + 2 / 4 + 2 / 3) / 3
    assert m.compute() == pytest.approx({"accuracy": 4 / 6, "macro_f1": macro, "n": 6})
    # a class only the val split has (IGNORE) is a miss, and summing ranks' states is exact
    a, b = ClassF1(), ClassF1()
    a.update(logits[:3], gold[:3], None)
    b.update(logits[3:6], np.array([0, 0, -100]), None)
    merged = ClassF1()
    merged.merge(a.state() + b.state())
    # gold cat cat dog | bird bird ?, predicted cat dog dog | bird cat bird: bird tp 1, fp 1
    # (the unknown class), fn 1 -> 2/4; cat tp 1, fp 1, fn 1 -> 2/4; dog tp 1, fp 1 -> 2/3
    assert merged.compute() == pytest.approx(
        {"accuracy": 3 / 6, "macro_f1": (2 / 4 + 2 / 4 + 2 / 3) / 3, "n": 6}
    )


def test_multi_label_micro_and_macro_f1_by_hand():
    gold = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]], np.float32)
    logits = np.array([[3, -3, 3], [3, 3, -3], [-3, -3, -3]], np.float32)
    m = metric_for("labels")
    assert isinstance(m, MultiLabelF1)
    m.update(logits, gold, None)
    # per label (tp, fp, fn): (1, 1, 1) -> 1/2, (1, 0, 1) -> 2/3, (1, 0, 0) -> 1
    assert m.compute() == pytest.approx(
        {"micro_f1": 6 / 9, "macro_f1": (1 / 2 + 2 / 3 + 1) / 3, "n": 3}
    )
    vqa = metric_for("answers")
    vqa.update(np.eye(2)[[0, 1]], [["cat"] * 10, ["cat"] * 9 + ["dog"]], ["cat", "dog"], None)
    assert vqa.compute() == pytest.approx({"vqa_accuracy": (1.0 + 0.3) / 2, "n": 2})


# ---------------------------------------------------------------- fine-tuning and a study


def finetune(task: dict, kind: str, out: Path, *extra: str) -> subprocess.Popen:
    sets = task["sets"]
    args = ["finetune", str(REPO / "configs/finetune/tiny.yaml"), f"data.task={kind}",
            f"data.sources=[{{url: {sets[kind, 'train']}}}]",
            f"eval.sources=[{{url: {sets[kind, 'val']}}}]", f"run.output={out}",
            f"run.name=ft-{kind}", "run.init_from=null", "optim.total_steps=4",
            "optim.warmup_steps=1", "eval.every=4", "run.checkpoint_every=4", *extra]  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "vlpdist", *args], cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy())  # fmt: skip


def test_a_short_finetune_of_each_kind_and_its_controls(task, tmp_path):
    """All at once (each run is mostly its imports): label and labels with regions, scored
    with shuffled regions too; answers as the text-only control."""
    procs = {kind: finetune(task, kind, tmp_path, *extra) for kind, extra in (
        ("label", ()), ("labels", ()), ("answers", ("data.text_only=true",)))}  # fmt: skip
    runs = {}
    for kind, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        runs[kind] = json.loads(Path(json.loads(out.splitlines()[-1])["record"]).read_text())
    metrics = {"label": ("accuracy", "macro_f1"), "labels": ("micro_f1", "macro_f1"),
               "answers": ("vqa_accuracy",)}  # fmt: skip
    for kind, rec in runs.items():
        [e] = rec["evals"]
        primary = metrics[kind][0]
        assert rec["task"] == kind and rec["metric"]["name"] == primary
        assert 0 <= rec["metric"]["value"] <= 1 and rec["steps"] == 4
        assert all(k in e for k in metrics[kind]) and e["n"] == 16  # 8 val images x 2 texts
        assert e["image_shuffle_gap"] == e[primary] - e[f"{primary}_shuffled"]
        assert rec["metric"]["text_only"] is (kind == "answers")
    assert runs["answers"]["evals"][0]["image_shuffle_gap"] == 0.0  # no regions to shuffle


def test_a_study_names_its_own_task_and_the_report_shows_its_metric(task, tmp_path):
    from vlpdist.analysis import report as rp
    from vlpdist.study.grid import plan

    sets = task["sets"]
    cfg = load(Config, str(REPO / "configs/study/tiny.yaml"), [
        f"run.output={tmp_path}", "study.pretrain_sets={}",
        f"study.tasks={{vqa: {{train: [{{url: a}}], val: [{{url: b}}]}}, memes: {{task: label, "
        f"train: [{{url: {sets['label', 'train']}}}], val: [{{url: {sets['label', 'val']}}}]}}}}",
    ], command="study")  # fmt: skip
    runs = [r for r in plan(cfg) if r.labels.get("task") == "memes"]
    assert {r.labels["pretrain"] for r in runs} == {"scratch", "text-only"}
    assert all(r.cfg.data.task == "label" for r in runs)
    assert [r.cfg.data.text_only for r in runs] == [False, True]
    records = []
    for r, value in zip(runs, (0.75, 0.5), strict=True):
        records.append({"run": r.name, "kind": "finetune", "status": "done",
                        "metric": {"name": "accuracy", "value": value, "shuffled": 0.5,
                                   "image_shuffle_gap": value - 0.5,
                                   "text_only": r.cfg.data.text_only},
                        "study": {"labels": r.labels}})  # fmt: skip
    [table] = rp.tables(records)
    md = rp.markdown([table])
    assert "| pretraining | memes (accuracy) | memes (accuracy) · shuffled regions |" in md
    assert "| scratch | 75.0 (n=1) | 50.0 (-25.0) |" in md.replace("−", "-")
    assert "| text-only | 50.0 (n=1) | no regions |" in md
    with pytest.raises(VlpdistError, match="'memes' is not a built-in task: give its kind"):
        load(Config, str(REPO / "configs/study/tiny.yaml"),
             ["study.tasks={memes: {train: [{url: a}], val: [{url: b}]}}"], command="study")  # fmt: skip
