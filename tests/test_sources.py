"""Shard builders on tiny files in the exact public formats, built with the shipped recipes."""

from __future__ import annotations

import json
import logging
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from public_fixtures import (
    RECIPES,
    b64,
    karpathy,
    make_img,
    read_set,
    recipe,
    skips,
    snli_ve_line,
    vqa_answers,
    write_json,
    write_lines,
    write_lmdb,
    write_npy,
    write_npz,
    write_tsv,
)

from vlpdist.config import Recipe, load
from vlpdist.errors import ConfigError, ShardError, SourceError
from vlpdist.shards import schema
from vlpdist.shards.build import build
from vlpdist.shards.features.unpickle import UnsafePickle, load_npy_object, loads
from vlpdist.shards.sources import SOURCES
from vlpdist.shards.sources.common import resolve
from vlpdist.storage import Storage


@pytest.fixture(scope="module")
def tok(minilm_dir):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(minilm_dir)
    return lambda text: t(text, add_special_tokens=False)["input_ids"]


COCO_IMAGES = [
    (9, "train", ["A man riding a horse.", "Someone on a brown horse"]),
    (25, "restval", ["Two dogs play in the snow."]),
    (30, "val", ["A val image caption."]),
    (42, "train", ["A kitchen with a red stove.", ""]),  # one empty caption
    (77, "train", ["No features exist for this one."]),
]


def coco_root(tmp_path: Path, layout: str = "butd") -> tuple[Path, dict]:
    imgs = {cid: make_img(cid, n=3 + cid % 4) for cid, _, _ in COCO_IMAGES if cid != 77}
    data = karpathy(COCO_IMAGES)
    data["images"].insert(3, {"split": "train", "sentences": []})  # no cocoid: malformed
    write_json(tmp_path / "dataset_coco.json", data)
    keys = {
        str(c) if layout == "butd" else f"COCO_train2014_{c:012d}": im for c, im in imgs.items()
    }
    write_tsv(tmp_path / "features/trainval_resnet101_faster_rcnn_genome_36.tsv", keys, layout)
    return tmp_path, imgs


@pytest.mark.parametrize("layout", ["butd", "lxmert"])
def test_coco_karpathy_from_tsv(tmp_path, minilm_dir, tok, layout):
    root, imgs = coco_root(tmp_path, layout)
    manifest = build(recipe("coco", root, minilm_dir), str(tmp_path / "out"))
    _, samples = read_set(tmp_path / "out")
    assert sorted(samples) == ["25", "42", "9"]  # train + restval; 30 is val; 77 has no features
    s = samples["9"]
    assert [t["text"] for t in s.texts] == ["A man riding a horse.", "Someone on a brown horse"]
    assert s.texts[0]["ids"] == tok("A man riding a horse.") and s.texts[0]["kind"] == "caption"
    assert s.texts[1]["caption_id"] == 1
    im = imgs[9]
    assert (s.meta["width"], s.meta["height"]) == (im.width, im.height)  # LXMERT: h before w
    assert s.feats.dtype == np.float16 and s.feats.shape == im.feats.shape
    np.testing.assert_allclose(s.feats, im.feats, atol=1e-2)
    np.testing.assert_allclose(s.boxes, im.norm_boxes(), atol=1e-6)
    assert manifest["feature_dim"] == 16 and manifest["num_samples"] == 3
    assert manifest["build_report"]["read"] == 5  # the 5 train/restval records
    assert set(skips(manifest)) == {
        ("3", "malformed image record", "dataset_coco.json:images[3]"),
        ("42", "caption is not a non-empty string", "dataset_coco.json:images[4].sentences[1]"),
        ("77", "no features for this image", "dataset_coco.json:images[5]"),
    }
    assert manifest["tokenizer"]["vocab_size"] == 30522
    assert all((tmp_path / "out/tokenizer" / f).exists() for f in manifest["tokenizer"]["files"])


def test_coco_official_captions_and_subsets(tmp_path, minilm_dir):
    imgs = {c: make_img(c) for c in range(1, 41)}
    anns = [
        {"image_id": c, "id": 100 + 2 * c + k, "caption": f"caption {k} of image {c}"}
        for c in imgs
        for k in range(2)
    ]
    write_json(tmp_path / "captions_train2014.json", {"images": [], "annotations": anns})
    write_npy(tmp_path / "feats", {f"COCO_train2014_{c:012d}": im for c, im in imgs.items()})
    common = ["inputs.captions={root}/captions_train2014.json", "inputs.features={root}/feats"]
    common.append("options.features_format=auto")

    def kept(name: str, *extra: str) -> set[str]:
        out = tmp_path / f"out-{name}-{len(extra)}-{'_'.join(extra)}"
        m = build(recipe(name, tmp_path, minilm_dir, *common, *extra), str(out))
        _, samples = read_set(out)
        assert all(len(s.texts) == 2 for s in samples.values())  # by image: all captions
        assert m["extra"]["captions_format"] == "official"
        return set(samples)

    full = kept("coco")
    ten, fifty = kept("coco_10pct"), kept("coco_50pct")
    assert len(full) == 40 and len(ten) == 4 and len(fifty) == 20
    assert ten < fifty  # the seeded prefix: 10% lies inside 50%
    assert kept("coco_10pct", "options.seed=0", "shards.target_shard_mb=0.001") == ten
    assert kept("coco_10pct", "options.seed=1") != ten


def vqa_root(tmp_path: Path) -> dict:
    imgs = {c: make_img(c, classes=5) for c in (1, 2)}
    write_npy(tmp_path / "features", {f"COCO_train2014_{c:012d}": im for c, im in imgs.items()})
    questions = [
        {"image_id": 1, "question": "What color is the cat?", "question_id": 10},
        {"image_id": 1, "question": "Is it day?", "question_id": 11},
        {"image_id": 2, "question": "How many dogs?", "question_id": 20},
        {"image_id": 2, "question_id": 21},  # no question text
        {"image_id": 2, "question": "Orphan?", "question_id": 22},  # no annotation
    ]
    ten = ["black"] * 6 + ["dark gray"] * 4
    anns = [
        {"question_id": 10, "image_id": 1, "answers": vqa_answers(ten)},
        {"question_id": 11, "image_id": 1, "answers": vqa_answers(["yes"] * 10)},
        {"question_id": 20, "image_id": 2, "answers": [{"answer": 2}]},  # bad answers
    ]
    for a, mca, t in zip(anns, ["black", "yes", "2"], ["other", "yes/no", "number"], strict=True):
        a.update(multiple_choice_answer=mca, answer_type=t, question_type="what")
    write_json(tmp_path / "v2_OpenEnded_mscoco_train2014_questions.json", {"questions": questions})
    write_json(tmp_path / "v2_mscoco_train2014_annotations.json", {"annotations": anns})
    return imgs


@pytest.mark.parametrize("name", ["vqa2", "vqa2_pretrain"])
def test_vqa2_from_npy_features(tmp_path, minilm_dir, tok, name):
    imgs = vqa_root(tmp_path)
    out = tmp_path / "out"
    m = build(
        recipe(
            name,
            tmp_path,
            minilm_dir,
            "inputs.features={root}/features",
            "options.features_format=npy",
        ),
        str(out),
    )
    _, samples = read_set(out)
    assert sorted(samples) == ["1"]  # image 2 lost all its questions
    s = samples["1"]
    q = {t["question_id"]: t for t in s.texts}
    assert q[10]["text"] == "What color is the cat?"
    assert q[10]["ids"] == tok("What color is the cat?")
    assert q[10]["answers"] == ["black"] * 6 + ["dark gray"] * 4
    if name == "vqa2":
        assert (q[10]["multiple_choice_answer"], q[10]["answer_type"]) == ("black", "other")
        assert "answer_ids" not in q[10]
    else:
        assert q[10]["answer_ids"][-1] == tok("dark gray") and q[11]["answer_ids"][0] == tok("yes")
    np.testing.assert_allclose(s.cls_prob, imgs[1].cls_prob, atol=1e-3)
    assert m["cls_prob_dim"] == 5
    reasons = {r for _, r, _ in skips(m)}
    assert reasons == {
        "malformed question record",
        "bad answers in annotation",
        "no annotation for this question",
    }
    assert (
        "22",
        "no annotation for this question",
        "v2_OpenEnded_mscoco_train2014_questions.json:questions[4]",
    ) in skips(m)


def vqa_test_root(tmp_path: Path) -> None:
    """The test2015 release: v2_Questions_Test_mscoco.zip holds the test2015 and test-dev2015
    question files (no annotations exist publicly); test2015_36.zip the BUTD features."""
    questions = {
        "test2015": [
            {"image_id": 1, "question": "What is on the table?", "question_id": 1000},
            {"image_id": 1, "question": "Is it sunny?", "question_id": 1001},
            {"image_id": 262144, "question": "How many people?", "question_id": 262144000},
        ],
        "test-dev2015": [{"image_id": 1, "question": "Is it sunny?", "question_id": 1001}],
    }
    for subtype, qs in questions.items():
        write_json(
            tmp_path / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
            {
                "info": {"description": "VQA v2", "year": 2017, "version": "2.0"},
                "license": {"name": "Creative Commons Attribution 4.0 International License"},
                "task_type": "Open-Ended",
                "data_type": "mscoco",
                "data_subtype": subtype,
                "questions": qs,
            },
        )
    write_tsv(
        tmp_path / "features/test2015_resnet101_faster_rcnn_genome_36.tsv",
        {"1": make_img(1), "262144": make_img(2)},
    )


def test_vqa2_test2015_and_test_dev_from_the_shipped_recipe(tmp_path, minilm_dir, tok):
    vqa_test_root(tmp_path)
    m = build(recipe("vqa2_test", tmp_path, minilm_dir), str(tmp_path / "test"))
    _, samples = read_set(tmp_path / "test")
    assert sorted(samples) == ["1", "262144"] and skips(m) == []
    assert m["recipe"]["inputs"]["annotations"] is None  # recorded as left out
    q = {t["question_id"]: t for s in samples.values() for t in s.texts}
    assert sorted(q) == [1000, 1001, 262144000]
    assert q[1001]["text"] == "Is it sunny?" and q[1001]["ids"] == tok("Is it sunny?")
    assert all(t["answers"] == [] and "multiple_choice_answer" not in t for t in q.values())
    assert samples["1"].meta["split"] == "test2015"
    over = ["split=test-dev2015", "dataset=vqa2_testdev"]
    m = build(recipe("vqa2_test", tmp_path, minilm_dir, *over), str(tmp_path / "dev"))
    _, samples = read_set(tmp_path / "dev")
    assert list(samples) == ["1"] and [t["question_id"] for t in samples["1"].texts] == [1001]
    assert m["dataset"] == "vqa2_testdev"


def test_vqa2_annotations_null_leaves_them_out(tmp_path, minilm_dir):
    vqa_root(tmp_path)
    over = ["inputs.features={root}/features", "options.features_format=npy"]
    m = build(
        recipe("vqa2", tmp_path, minilm_dir, *over, "inputs.annotations=null"),
        str(tmp_path / "out"),
    )
    _, samples = read_set(tmp_path / "out")
    texts = [t for s in samples.values() for t in s.texts]
    assert sorted(t["question_id"] for t in texts) == [10, 11, 20, 22]  # no answers needed
    assert all(t["answers"] == [] for t in texts)
    assert skips(m) == [
        (
            "21",
            "malformed question record",
            "v2_OpenEnded_mscoco_train2014_questions.json:questions[3]",
        )
    ]


@pytest.mark.parametrize(
    "name, override, error, message",
    [
        ("vqa2", "inputs.annotations=", ConfigError, "inputs.annotations: empty path"),
        ("vqa2", "inputs.annotations=' '", ConfigError, "inputs.annotations: empty path"),
        ("vqa2", "inputs.questions=null", SourceError, "inputs.questions: source 'vqa2' needs"),
        ("vqa2", "inputs.features=null", SourceError, "inputs.features: source 'vqa2' needs"),
        (
            "vqa2_pretrain",
            "inputs.annotations=null",
            SourceError,
            "inputs.annotations: source 'vqa2_pretrain' needs",
        ),
    ],
)
def test_null_and_empty_inputs_are_one_line_errors(
    tmp_path, minilm_dir, name, override, error, message
):
    vqa_root(tmp_path)
    with pytest.raises(error) as e:
        build(recipe(name, tmp_path, minilm_dir, override), str(tmp_path / "out"))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_cli_vqa2_test_split_and_input_mistakes(tmp_path, minilm_dir, run_cli):
    vqa_test_root(tmp_path)
    base = [f"root={tmp_path}", f"shards.tokenizer={minilm_dir}", "shards.progress=false"]
    vqa2 = ["shards", "build", str(RECIPES / "vqa2.yaml"), "--out", str(tmp_path / "bad"), *base]
    # every other input names an existing file: only the one under test is wrong
    vqa2 += ["inputs.questions={root}/v2_OpenEnded_mscoco_test2015_questions.json"]
    vqa2 += ["inputs.features={root}/features/test2015_resnet101_faster_rcnn_genome_36.tsv"]
    for override, key in [
        ("inputs.annotations=", "inputs.annotations: empty path"),
        ("inputs.questions=null", "inputs.questions: source 'vqa2' needs this input"),
    ]:
        out = run_cli(*vqa2, override)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith("vlpdist: error: ") and key in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    # the README's way to the test split: the shipped recipe, nothing else to change
    args = ["shards", "build", str(RECIPES / "vqa2_test.yaml"), "--out", str(tmp_path / "t")]
    done = run_cli(*args, *base, check=True)
    assert "build report for vqa2_test: read 3, wrote 2 samples" in done.stderr


def cc_root(tmp_path: Path, rows: int = 12) -> None:
    lines = [f"caption number {r}\thttp://example.com/{r}.jpg" for r in range(rows)]
    lines[2] = "a row without its url"
    write_lines(tmp_path / "Train_GCC-training.tsv", lines)
    with open(tmp_path / "Train_GCC-training.tsv", "ab") as f:
        f.write(b"caption \xff\xfe in latin-1\thttp://example.com/x.jpg\n")  # line 13
    imgs = {str(r): make_img(r, n=2) for r in range(rows) if r != 5}
    imgs["7"] = make_img(7, n=2, dim=8)  # a different feature dim: the writer skips it
    write_npz(tmp_path / "features/train", imgs)


def test_cc_npz_and_cc_small(tmp_path, minilm_dir, tok):
    cc_root(tmp_path)
    m = build(recipe("cc", tmp_path, minilm_dir), str(tmp_path / "cc"))
    _, samples = read_set(tmp_path / "cc")
    assert m["extra"]["features"] == {"format": "npz", "images": 11}
    assert sorted(samples, key=int) == [str(r) for r in range(12) if r not in (2, 5, 7)]
    t = samples["3"].texts[0]
    assert (t["text"], t["url"], t["ids"]) == (
        "caption number 3",
        "http://example.com/3.jpg",
        tok("caption number 3"),
    )
    got = {(item, where) for item, _, where in skips(m)}
    assert got == {
        ("2", "Train_GCC-training.tsv:3"),
        ("5", "Train_GCC-training.tsv:6"),
        ("7", "Train_GCC-training.tsv:8"),
        ("line 13", "Train_GCC-training.tsv:13"),
    }
    reasons = {i: r for i, r, _ in skips(m)}
    assert "feature dim 8 != 16" in reasons["7"] and reasons["line 13"] == "not UTF-8 text"
    assert m["build_report"]["read"] == 13

    def small(seed: int) -> set[str]:
        out = tmp_path / f"small-{seed}"
        args = [f"options.size={4}", f"options.seed={seed}", 'options.image_id="{row:09d}"']
        m = build(
            recipe("cc_small", tmp_path, minilm_dir, *args, "options.features_format=npz"),
            str(out),
            overwrite=True,
        )
        assert m["extra"]["subset"] == {"how": "size=4", "seed": seed, "kept": 4, "of": 13}
        _, s = read_set(out)
        assert m["build_report"]["read"] == 4
        return set(s) | {i for i, _, _ in skips(m)}

    # image ids '000000003' match features '3' as numbers; 4 rows drawn, by row
    assert small(0) == small(0) and len(small(0)) == 4
    assert any(small(seed) != small(0) for seed in (1, 2, 3))


def test_ccg_json_and_jsonl(tmp_path, minilm_dir):
    write_npy(tmp_path / "features/train", {str(i): make_img(i) for i in (1, 2, 3)})
    write_json(
        tmp_path / "generated_captions.json", {"1": "a generated caption", "2": ["x", "y"], "3": 5}
    )
    r = recipe("ccg", tmp_path, minilm_dir, "options.captioner.model=blip-base")
    m = build(r, str(tmp_path / "a"))
    _, samples = read_set(tmp_path / "a")
    assert [t["text"] for t in samples["2"].texts] == ["x", "y"] and "3" not in samples
    assert m["extra"]["captioner"] == {"model": "blip-base", "checkpoint": "unspecified"}
    assert skips(m) == [("3", "caption is not a non-empty string", 'generated_captions.json:"3"')]
    write_lines(
        tmp_path / "gen.jsonl",
        ['{"image_id": 1, "caption": "one"}', "{not json", '{"image_id": 3, "caption": "three"}'],
    )
    m = build(
        recipe("ccg", tmp_path, minilm_dir, "inputs.captions={root}/gen.jsonl"), str(tmp_path / "b")
    )
    assert sorted(read_set(tmp_path / "b")[1]) == ["1", "3"]
    assert skips(m)[0][2] == "gen.jsonl:2"


def vizwiz_root(tmp_path: Path) -> None:
    recs = []
    for i in range(3):
        answers = [{"answer": f"ans {i}", "answer_confidence": "yes"}] * 9
        answers.append({"answer": "unanswerable", "answer_confidence": "maybe"})
        recs.append(
            {
                "image": f"VizWiz_train_{i:08d}.jpg",
                "question": f"What is item {i}?",
                "answers": answers,
                "answer_type": "other",
                "answerable": 1,
            }
        )
    recs[2]["answerable"] = 7  # a bad label
    write_json(tmp_path / "Annotations/train.json", recs)
    feats = {f"VizWiz_train_{i:08d}": make_img(i) for i in range(3)}
    write_lmdb(tmp_path / "features/train.lmdb", feats)


def test_vizwiz_lmdb_needs_trust_pickle(tmp_path, minilm_dir):
    vizwiz_root(tmp_path)
    r = recipe("vizwiz", tmp_path, minilm_dir, "inputs.features={root}/features/{split}.lmdb")
    with pytest.raises(SourceError, match="--trust-pickle") as e:
        build(r, str(tmp_path / "out"))
    assert "pickles" in str(e.value) and not (tmp_path / "out/index.json").exists()
    m = build(r, str(tmp_path / "out"), trust_pickle=True)
    _, samples = read_set(tmp_path / "out")
    assert sorted(samples) == ["VizWiz_train_00000000_jpg", "VizWiz_train_00000001_jpg"]
    s = samples["VizWiz_train_00000001_jpg"]
    assert s.meta["image_id"] == "VizWiz_train_00000001.jpg"  # as in the public file
    t = s.texts[0]
    assert t["question_id"] == "VizWiz_train_00000001" and t["answerable"] is True
    assert t["answers"][-1] == "unanswerable" and t["answer_confidence"][-1] == "maybe"
    assert m["extra"]["features"]["format"] == "lmdb"
    assert skips(m)[0][1].startswith("bad label")


def test_snli_ve_bad_rows(tmp_path, minilm_dir, tok):
    ids = ["3416050480", "2248275918"]
    write_tsv(tmp_path / "features/f.tsv", {i: make_img(int(i) % 97) for i in ids})
    rows = [
        {
            "Flickr30K_ID": ids[0],
            "sentence2": "A dog runs.",
            "gold_label": "entailment",
            "pairID": "p1",
            "sentence1": "A dog is running on grass.",
        },
        {
            "Flickr30K_ID": ids[0],
            "sentence2": "A cat sleeps.",
            "gold_label": "contradiction",
            "pairID": "p2",
        },
        {"Flickr30K_ID": ids[1], "sentence2": "Unlabelled.", "gold_label": "-", "pairID": "p3"},
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(1, '{"Flickr30K_ID": "3416050480", "sentence2": ')  # truncated line
    write_lines(tmp_path / "snli_ve_train.jsonl", lines)
    r = recipe("snli_ve", tmp_path, minilm_dir, "inputs.features={root}/features/*.tsv")
    m = build(r, str(tmp_path / "out"))
    _, samples = read_set(tmp_path / "out")
    assert list(samples) == [ids[0]]
    texts = samples[ids[0]].texts
    assert [(t["pair_id"], t["label"]) for t in texts] == [
        ("p1", "entailment"),
        ("p2", "contradiction"),
    ]
    assert texts[1]["kind"] == "hypothesis" and texts[1]["ids"] == tok("A cat sleeps.")
    assert skips(m) == [
        ("line 2", "malformed JSON line", "snli_ve_train.jsonl:2"),
        ("p3", "bad label '-'", "snli_ve_train.jsonl:4"),
    ]
    assert m["build_report"]["read"] == 4


def test_snli_ve_original_release_files(tmp_path, minilm_dir, tok):
    """The files linked from the SNLI-VE README name the image "Flikr30kID" (sic) with its
    '.jpg'; features are keyed by the numeric Flickr30K id, as the later generator's
    "Flickr30K_ID" is, so both formats give the same image ids and sample keys."""
    ids = ["2248275918", "3416050480"]
    write_tsv(tmp_path / "features/f.tsv", {i: make_img(int(i) % 97) for i in ids})
    premise = "Two young children in blue jerseys are in a bathroom."
    write_lines(
        tmp_path / "snli_ve_train.jsonl",
        [
            snli_ve_line(ids[0], 0, premise, "Two kids are washing their hands.", "entailment"),
            snli_ve_line(ids[0], 0, premise, "Two kids at a ballgame.", "contradiction"),
            snli_ve_line(ids[1], 2, "A dog runs on grass.", "The dog is old.", "neutral"),
        ],
    )
    r = recipe("snli_ve", tmp_path, minilm_dir, "inputs.features={root}/features/*.tsv")
    m = build(r, str(tmp_path / "out"))
    _, samples = read_set(tmp_path / "out")
    assert list(samples) == ids and skips(m) == [] and m["build_report"]["read"] == 3
    s = samples[ids[0]]
    assert s.meta["image_id"] == ids[0]  # the numeric id, without the file's '.jpg'
    assert [(t["pair_id"], t["label"]) for t in s.texts] == [
        (f"{ids[0]}.jpg#0r1e", "entailment"),
        (f"{ids[0]}.jpg#0r1c", "contradiction"),
    ]
    assert s.texts[1]["text"] == "Two kids at a ballgame."
    assert s.texts[1]["ids"] == tok("Two kids at a ballgame.")
    assert samples[ids[1]].texts[0]["label"] == "neutral"


def test_tsv_named_fields(tmp_path, minilm_dir):
    """A TSV layout named by options.tsv_fields (here with cls_prob); unknown layouts stop."""
    im = make_img(3, n=4, classes=6)
    row = ["1000092795", im.height, im.width, 4, b64(im.boxes), b64(im.feats), b64(im.cls_prob)]
    write_lines(tmp_path / "features/f.tsv", ["\t".join(map(str, row))])
    line = {"Flickr30K_ID": 1000092795, "sentence2": "h", "gold_label": "neutral", "pairID": 1}
    write_lines(tmp_path / "snli_ve_train.jsonl", [json.dumps(line)])
    fields = "[image_id, image_h, image_w, num_boxes, boxes, features, cls_prob]"
    over = ["inputs.features={root}/features/f.tsv", f"options.tsv_fields={fields}"]
    m = build(recipe("snli_ve", tmp_path, minilm_dir, *over), str(tmp_path / "out"))
    s = read_set(tmp_path / "out")[1]["1000092795"]
    assert (s.meta["width"], s.meta["height"], m["cls_prob_dim"]) == (im.width, im.height, 6)
    np.testing.assert_allclose(s.boxes, im.norm_boxes(), atol=1e-6)
    np.testing.assert_allclose(s.cls_prob, im.cls_prob, atol=1e-3)
    with pytest.raises(SourceError, match=r"f.tsv:1: 7 tab-separated fields.*options.tsv_fields"):
        build(recipe("snli_ve", tmp_path, minilm_dir, over[0]), str(tmp_path / "again"))


def test_mmimdb(tmp_path, minilm_dir, tok):
    write_json(tmp_path / "split.json", {"train": ["0000001", "0000002", "0000003"], "dev": []})
    write_json(
        tmp_path / "dataset/0000001.json",
        {"plot": ["First plot.", "Second."], "genres": ["Drama", "Comedy"]},
    )
    write_json(tmp_path / "dataset/0000003.json", {"plot": ["No genres."], "genres": []})
    write_npy(tmp_path / "features", {i: make_img(int(i)) for i in ("0000001", "0000002")})
    m = build(recipe("mmimdb", tmp_path, minilm_dir), str(tmp_path / "out"))
    (t,) = read_set(tmp_path / "out")[1]["0000001"].texts
    assert (t["kind"], t["text"], t["genres"]) == ("plot", "First plot.", ["Drama", "Comedy"])
    assert t["ids"] == tok("First plot.")
    assert [(i, r) for i, r, _ in skips(m)] == [
        ("0000002", "no movie json"),
        ("0000003", "bad label (genres must be a non-empty list of names)"),
    ]
    m = build(recipe("mmimdb", tmp_path, minilm_dir, "options.plot=all"), str(tmp_path / "all"))
    assert [t["text"] for t in read_set(tmp_path / "all")[1]["0000001"].texts] == [
        "First plot.",
        "Second.",
    ]


def test_mmimdb_long_plot_is_truncated_without_the_tokenizer_warning(
    tmp_path, minilm_dir, tok, caplog, capfd
):
    """A plot longer than the tokenizer's model_max_length (512): its ids are cut to
    shards.max_text_tokens and counted, and transformers' "Token indices sequence length is
    longer than ... indexing errors" warning, false here, is not emitted."""
    long_plot = " ".join(f"scene {i} of a long story." for i in range(200))
    expected = tok(long_plot)  # the test's own tokenizer may warn here: not the build's
    assert len(expected) > 512
    write_json(tmp_path / "split.json", {"train": ["0000001", "0000002"]})
    write_json(tmp_path / "dataset/0000001.json", {"plot": [long_plot], "genres": ["Drama"]})
    write_json(tmp_path / "dataset/0000002.json", {"plot": ["Short."], "genres": ["Comedy"]})
    write_npy(tmp_path / "features", {i: make_img(int(i)) for i in ("0000001", "0000002")})
    # transformers' loggers need not propagate to the root logger caplog listens on
    tok_logger = logging.getLogger("transformers.tokenization_utils_base")
    tok_logger.addHandler(caplog.handler)
    capfd.readouterr()
    caplog.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="transformers.tokenization_utils_base"):
            m = build(recipe("mmimdb", tmp_path, minilm_dir), str(tmp_path / "out"))
    finally:
        tok_logger.removeHandler(caplog.handler)
    captured = capfd.readouterr()
    for text in (caplog.text, captured.out, captured.err):
        assert "Token indices sequence length" not in text
        assert "indexing errors" not in text
    samples = read_set(tmp_path / "out")[1]
    (t,) = samples["0000001"].texts
    assert t["text"] == long_plot  # the text itself is kept whole
    assert t["ids"] == expected[:256]  # shards.max_text_tokens of mmimdb.yaml
    assert samples["0000002"].texts[0]["ids"] == tok("Short.")
    assert m["build_report"]["truncated_texts"] == 1
    assert m["tokenizer"]["max_tokens"] == 256


def test_build_to_s3_reads_back(tmp_path, minilm_dir, s3):
    import webdataset as wds

    root, _ = coco_root(tmp_path)
    url = s3.url("shards", "coco")
    build(recipe("coco", root, minilm_dir, "shards.target_shard_mb=0.002"), url)
    keys = sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket)["Contents"])
    assert "shards/coco/index.json" in keys and "shards/coco/tokenizer/tokenizer.json" in keys
    storage = Storage()
    manifest = json.loads(storage.read_text(f"{url}/index.json"))
    assert len(manifest["shards"]) >= 2 and manifest["num_samples"] == 3
    local = []
    for shard in manifest["shards"]:
        data = storage.read_bytes(f"{url}/{shard['name']}")
        assert len(data) == shard["bytes"]
        off = shard["offsets"]
        path = tmp_path / shard["name"]
        path.write_bytes(data)
        local.append(str(path))
        for i in range(shard["num_samples"]):  # a byte range holds exactly one sample
            piece = tmp_path / "piece.tar"
            piece.write_bytes(data[off[i] : off[i + 1]] + b"\0" * 1024)
            with tarfile.open(piece) as tar:
                assert len({n.split(".")[0] for n in tar.getnames()}) == 1
    seen = {}
    for item in wds.WebDataset(local, shardshuffle=False):
        seen[item["__key__"]] = json.loads(item["json"])
        assert schema.load_npy(item["feats.npy"]).dtype == np.float16
    assert sorted(seen) == ["25", "42", "9"] and seen["25"]["texts"][0]["text"].startswith("Two")
    with pytest.raises(ShardError, match="--overwrite"):
        build(recipe("coco", root, minilm_dir), url)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_restricted_unpickler(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafePickle, match="refusing to unpickle '(posix|os|nt).system'"):
        loads(pickle.dumps({"bbox": _Evil()}), "evil.pkl")
    np.save(tmp_path / "x_info.npy", np.array({"boxes": _Evil()}, dtype=object))
    with pytest.raises(SourceError, match="x_info.npy: refusing"):
        load_npy_object((tmp_path / "x_info.npy").read_bytes(), "x_info.npy")
    assert not (tmp_path / "pwned").exists()
    good = {"bbox": np.ones((2, 4), np.float32), "num_boxes": np.int64(2), "name": "a"}
    for proto in (2, 4, 5):
        back = loads(pickle.dumps(good, protocol=proto))
        np.testing.assert_array_equal(back["bbox"], good["bbox"])
        assert back["num_boxes"] == 2 and back["name"] == "a"


def test_malicious_info_npy_stops_the_build(tmp_path, minilm_dir):
    vqa_root(tmp_path)
    np.save(
        tmp_path / "features/COCO_train2014_000000000001_info.npy",
        np.array({"bbox": _Evil()}, dtype=object),
    )
    with pytest.raises(SourceError, match="refusing to unpickle"):
        build(
            recipe(
                "vqa2",
                tmp_path,
                minilm_dir,
                "inputs.features={root}/features",
                "options.features_format=npy",
            ),
            str(tmp_path / "out"),
        )
    assert not (tmp_path / "out/index.json").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("inputs.pictures={root}/x", "inputs.pictures: unknown input of source 'coco'"),
        ("inputs.images={root}/x", "inputs.images and inputs.features: give one of them"),
        ("inputs.features=null", "inputs.features: source 'coco' needs this input"),
        ("options.fraktion=0.1", "options.fraktion: unknown option of source 'coco'"),
        ("options.fraction=2", "options.fraction: must be in (0, 1]"),
        ("options.format=xml", "options.format: 'xml' is not one of"),
        ("inputs.captions={root}/nope.json", "nope.json: file not found (inputs.captions)"),
        ("inputs.captions={root}/{year}.json", "unknown placeholder '{year}'"),
        ("inputs.captions={root}/bad.json", "bad.json: invalid JSON (line 1, column 2)"),
    ],
)
def test_recipe_mistakes_are_one_line(tmp_path, minilm_dir, override, message):
    coco_root(tmp_path)
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(SourceError) as e:
        build(recipe("coco", tmp_path, minilm_dir, override), str(tmp_path / "out"))
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_resolve(path):
    r = load(Recipe, str(path))
    inputs, options = resolve(r, SOURCES[r.source])
    assert "features" in inputs and r.shards.tokenizer and r.dataset == path.stem
    assert all("{" not in v for v in inputs.values())


def test_cli_build_to_s3(tmp_path, minilm_dir, s3, run_cli):
    vizwiz_root(tmp_path)
    # overrides on both sides of --out, as the README writes them
    args = ["shards", "build", str(RECIPES / "vizwiz.yaml"), f"root={tmp_path}"]
    args += [f"shards.tokenizer={minilm_dir}", "--out", s3.url("vizwiz")]
    args += ["shards.progress=false", "inputs.features={root}/features/{split}.lmdb"]
    refused = run_cli(*args)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--trust-pickle" in refused.stderr.strip().splitlines()[-1]
    done = run_cli(*args, "--trust-pickle", check=True)
    assert "wrote 2 samples in 1 shards" in done.stdout
    assert "build report for vizwiz: read 3, wrote 2 samples" in done.stderr
    assert "bad label (answerable must be 0/1" in done.stderr
    manifest = json.loads(Storage().read_text(s3.url("vizwiz", "index.json")))
    assert manifest["num_samples"] == 2 and manifest["recipe"]["source"] == "vizwiz"
