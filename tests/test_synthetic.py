"""The synthetic world: honest about being synthetic, deterministic, complete vocabulary, and
built so that the study's effects can show: words are grounded in region features,
attributes shift features, downstream labels follow the image and not the text alone."""

from __future__ import annotations

import contextlib
import io
import json
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vlpdist.config import Config, SynthConfig, load
from vlpdist.errors import ConfigError, ShardError
from vlpdist.shards.schema import SNLI_LABELS
from vlpdist.shards.synthetic import DATASETS, synthesize
from vlpdist.shards.synthetic import text as T
from vlpdist.shards.synthetic.build import world_card
from vlpdist.shards.synthetic.scenes import ImageScene, Obj
from vlpdist.shards.synthetic.tasks import TaskWriter
from vlpdist.shards.synthetic.world import World, resolve_domain
from vlpdist.storage import Storage

REPO = Path(__file__).resolve().parents[1]
SYNTH_CONFIGS = sorted((REPO / "configs" / "synth").glob("*.yaml"))
TINY = str(REPO / "configs" / "synth" / "tiny.yaml")


def build(out: Path | str, *overrides: str) -> tuple[dict, str]:
    cfg = load(Config, TINY, list(overrides), command="synth")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        manifests = synthesize(cfg, str(out), progress=False)
    return manifests, err.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    manifests, stderr = build(root)
    return root, manifests, stderr


def read_samples(path: Path) -> list[dict]:
    """Samples of one dataset, read with plain tarfile + numpy (no vlpdist reader)."""
    out = []
    for shard in sorted(path.glob("*.tar")):
        members: dict[str, dict] = {}
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
        for key, mem in members.items():
            arr = {
                e: np.load(io.BytesIO(mem[e]), allow_pickle=False)
                for e in mem
                if e.endswith(".npy")
            }
            out.append({"key": key, "meta": json.loads(mem["json"]), **arr})
    return out


def main_regions(sample: dict) -> list[tuple[int, dict]]:
    """(region index, object) of each object's own region."""
    truth = sample["meta"]["world_truth"]
    assert all(truth["object"][r] == j for j, r in enumerate(truth["main"]))
    return list(zip(truth["main"], truth["objects"], strict=True))


def majority(answers: list[str]) -> str:
    return Counter(answers).most_common(1)[0][0]


def referents(text: str, card: dict, objects: list[dict]) -> list[list[dict]]:
    """For each definite reference of a question or claim ("the large green pizza", "this
    cup", "which food is green"), the objects of the image that its words fit. Size words
    are categories, as in the world: "large" fits large objects, never medium ones."""
    hyper = {c["name"]: c["hypernym"] for c in card["classes"]}
    heads, modifiers = set(hyper) | set(hyper.values()), set(card["colors"]) | {"small", "large"}
    w, out = text.split(), []
    for j, det in enumerate(w):
        if det not in ("the", "this", "which"):
            continue
        i = j + 1
        while i < len(w) and w[i] in modifiers:
            i += 1
        if i == len(w) or w[i] not in heads:
            continue  # "the picture", "on the grass", "is this a dog ?"
        mods, head = w[j + 1 : i], w[i]
        if det == "which":  # "which food is green ?": the food that is green
            assert w[i + 1] == "is" and w[i + 2] in modifiers, text
            mods.append(w[i + 2])
        out.append(
            [
                o
                for o in objects
                if head in (o["class"], hyper[o["class"]])
                and all(m in (o["color"], o["size"]) for m in mods)
            ]
        )
    return out


def may_name_nothing(t: dict) -> bool:
    """A false claim, or a question about something the photo missed."""
    return t.get("label") == "contradiction" or t.get("answerable") is False


def truth_of(text: str, obj: dict) -> str | None:
    """What a question about one object must be answered, from the object; None if not asked."""
    if text.startswith(("what color is the ", "what color is this ")):
        return obj["color"]
    if text.startswith(("what is the ", "which ")):
        return obj["class"]
    if text.startswith("is the "):
        return "yes" if text.split()[-2] in (obj["color"], obj["size"]) else "no"
    return None


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("path", SYNTH_CONFIGS, ids=lambda p: p.name)
def test_shipped_synth_configs_load(path):
    cfg = load(Config, str(path), command="synth")
    assert cfg.synth.latent_dim <= cfg.synth.feature_dim


def test_shipped_configs_are_what_they_claim():
    names = {p.name for p in SYNTH_CONFIGS}
    assert {"default.yaml", "demo.yaml", "tiny.yaml"} <= names
    default = load(Config, str(REPO / "configs/synth/default.yaml"), command="synth").synth
    builtin = SynthConfig()
    # default.yaml spells out the built-in world: the two must not drift apart
    assert {n: s.size for n, s in DATASETS.items()} == default.sizes
    for name in ("coco", "web", "flickr", "blind", "poster"):
        assert resolve_domain(name, default.domains[name]) == resolve_domain(name, None)
    for f in ("seed", "feature_dim", "latent_dim", "num_classes", "regions", "answer_agreement"):
        assert getattr(default, f) == getattr(builtin, f), f
    demo = load(Config, str(REPO / "configs/synth/demo.yaml"), command="synth").synth
    assert demo.feature_dim == 2048 and all(demo.sizes[n] > 0 for n in DATASETS)
    assert load(Config, TINY, command="synth").synth.feature_dim <= 64


@pytest.mark.parametrize(
    "override, key",
    [
        ("synth.sizes.imagenet=5", "synth.sizes.imagenet"),
        ("synth.domains.web.shift=1.5", "synth.domains.web.shift"),
        ("synth.domains.mars.noise=1", "synth.domains.mars"),
        ("synth.latent_dim=4096", "synth.latent_dim"),
        ("synth.num_classes=99", "synth.num_classes"),
    ],
)
def test_bad_synth_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load(Config, TINY, [override], command="synth")


def test_domain_override_keeps_other_builtin_values():
    cfg = load(Config, None, ["synth.domains.web.noise=1.5"], command="synth").synth
    web = resolve_domain("web", cfg.domains.get("web"))
    assert web["noise"] == 1.5 and web["shift"] == resolve_domain("web", None)["shift"]


# ---------------------------------------------------------------- the world says what it is


def test_world_says_it_is_synthetic(world):
    root, manifests, stderr = world
    assert "SYNTHETIC" in stderr
    card = json.loads((root / "world.json").read_text())
    assert card["synthetic"] is True and "synthetic" in card["notice"].lower()
    assert set(card["datasets"]) == set(DATASETS) == set(manifests)
    for name, m in manifests.items():
        assert m["synthetic"] is True and m["source"] == "synthetic"
        assert m["extra"]["world_card"]["synthetic"] is True
        assert m["extra"]["dataset"]["task"] == DATASETS[name].task
        index = json.loads((root / "shards" / name / "index.json").read_text())
        assert (
            index["synthetic"] is True and index["num_samples"] == card["datasets"][name]["images"]
        )
        assert index["cls_prob_dim"] == len(card["cls_prob_labels"])


def test_the_card_says_what_a_region_tells_a_linear_probe(world):
    root, _, _ = world
    probe = json.loads((root / "world.json").read_text())["features"]["linear_probe"]
    assert set(probe) == {"coco", "web", "blind"}
    for domain, row in probe.items():
        assert row["objects"] > 100
        for key in ("class", "color", "size"):  # readable, from held-out images
            assert row["chance"][key] + 0.15 < row[key] <= 1.0, (domain, key, row)
    # the detector was trained on the photo look: it is surest there
    assert probe["coco"]["detector_class"] > max(probe["web"]["detector_class"],
                                                 probe["blind"]["detector_class"])  # fmt: skip


def test_deterministic_from_seed(world, tmp_path):
    _, first, _ = world
    again, _ = build(tmp_path / "again")
    other, _ = build(tmp_path / "other", "synth.seed=1")

    def digests(ms):
        return {n: [s["sha256"] for s in m["shards"]] for n, m in ms.items()}

    assert digests(again) == digests(first)
    assert all(digests(other)[n] != digests(first)[n] for n in first)


def test_existing_world_is_not_overwritten_silently(world):
    root, _, _ = world
    with pytest.raises(ShardError, match="--overwrite"):
        build(root)


# ---------------------------------------------------------------- words


def test_every_world_word_is_one_known_token(world):
    from transformers import AutoTokenizer

    root, _, _ = world
    tok = AutoTokenizer.from_pretrained(str(root / "shards" / "coco_like" / "tokenizer"))
    assert tok.pad_token_id == 0 and tok.convert_ids_to_tokens(1) == "[UNK]"
    words = sorted(T.all_words())
    ids = tok(words, add_special_tokens=False)["input_ids"]
    assert all(len(i) == 1 and i[0] != tok.unk_token_id for i in ids)
    for name in DATASETS:  # and every stored text re-tokenizes to its stored ids, no [UNK]
        for s in read_samples(root / "shards" / name):
            for t in s["meta"]["texts"]:
                assert t["ids"] == tok(t["text"], add_special_tokens=False)["input_ids"]
                assert tok.unk_token_id not in t["ids"]


# ---------------------------------------------------------------- grounding


def test_caption_words_are_grounded_in_regions(world):
    root, _, _ = world
    w = World(load(Config, TINY, command="synth").synth)
    names = [row[1] for row in w.class_table]
    # a class's look in feature space, as far as a probe that knows the world can tell
    protos = np.maximum(w.protos.astype(np.float32) @ w.embed, 0)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    det_hits, near_hits, mentioned_seen, random_seen = [], [], [], []
    rng = np.random.default_rng(0)
    for s in read_samples(root / "shards" / "coco_like"):
        argmax = s["cls_prob.npy"].astype(np.float32).argmax(1)
        words = {x for t in s["meta"]["texts"] for x in t["text"].split()} & set(names)
        for r, obj in main_regions(s):
            if obj["class"] in words:  # an object some caption mentions by its class word
                det_hits.append(argmax[r] == 1 + names.index(obj["class"]))
                f = s["feats.npy"][r].astype(np.float32)
                near_hits.append((protos @ f).argmax() == names.index(obj["class"]))
        for word in words:  # without the truth: is the mentioned class detected anywhere?
            mentioned_seen.append(1 + names.index(word) in argmax)
            other = names[rng.integers(len(names))]
            random_seen.append(1 + names.index(other) in argmax and other not in words)
    chance = 1 / len(w.labels)
    assert len(det_hits) > 50
    assert np.mean(det_hits) > 0.6 > 5 * chance
    assert np.mean(near_hits) > 0.6
    assert np.mean(mentioned_seen) > np.mean(random_seen) + 0.4


def test_attributes_shift_features(world):
    root, _, _ = world
    feats, classes, colors, sizes = [], [], [], []
    for s in read_samples(root / "shards" / "coco_like") + read_samples(
        root / "shards" / "vqa_val"
    ):
        for r, obj in main_regions(s):
            feats.append(s["feats.npy"][r].astype(np.float32))
            classes.append(obj["class"])
            colors.append(obj["color"])
            sizes.append(obj["size"])
    x, classes = np.stack(feats), np.array(classes)
    for c in set(classes):  # remove what the class explains; attributes must remain
        x[classes == c] -= x[classes == c].mean(0)

    def centroid_accuracy(labels: np.ndarray) -> tuple[float, float]:
        half = np.arange(len(labels)) % 2 == 0
        cats = sorted(set(labels[half]))
        centroids = np.stack([x[half & (labels == k)].mean(0) for k in cats])
        dist = ((x[~half, None, :] - centroids[None]) ** 2).sum(-1)
        return float((np.array(cats)[dist.argmin(1)] == labels[~half]).mean()), 1 / len(cats)

    acc, chance = centroid_accuracy(np.array(colors))
    assert acc > 2.5 * chance
    extreme = np.array(sizes) != "medium"
    x, size_labels = x[extreme], np.array(sizes)[extreme]
    assert centroid_accuracy(size_labels)[0] > 0.65


# ---------------------------------------------------------------- downstream tasks


def test_vqa_answers_and_types(world):
    root, _, _ = world
    questions = []
    for name in ("vqa_train", "vqa_val", "vqa_p"):
        for s in read_samples(root / "shards" / name):
            questions += [(q, s["meta"]["world_truth"]["objects"]) for q in s["meta"]["texts"]]
    assert all(len(q["answers"]) == 10 and q["kind"] == "question" for q, _ in questions)
    types = Counter(q["answer_type"] for q, _ in questions)
    assert set(types) == {"yes/no", "number", "other"}
    yes_no = [majority(q["answers"]) for q, _ in questions if q["answer_type"] == "yes/no"]
    assert 0.35 < yes_no.count("yes") / len(yes_no) < 0.65
    counts = Counter(majority(q["answers"]) for q, _ in questions if q["answer_type"] == "number")
    assert len(counts) >= 3 and max(counts.values()) < 0.6 * sum(counts.values())
    agree = [Counter(q["answers"]).most_common(1)[0][1] for q, _ in questions]
    assert 0 < sum(a < 10 for a in agree) < len(agree)  # annotators mostly agree, not always
    right = []  # answers follow the image: "is there a red dog ?" against the objects
    for q, objs in questions:
        m = re.fullmatch(r"is there an? (\w+) (\w+) \?", q["text"])
        if m:
            truth = any(o["color"] == m[1] and o["class"] == m[2] for o in objs)
            right.append(majority(q["answers"]) == ("yes" if truth else "no"))
    assert len(right) > 10 and np.mean(right) > 0.85
    vqa_p = read_samples(root / "shards" / "vqa_p")[0]["meta"]["texts"][0]
    assert len(vqa_p["answer_ids"]) == 10 and all(
        isinstance(i, int) for i in vqa_p["answer_ids"][0]
    )
    down = read_samples(root / "shards" / "vqa_train")[0]["meta"]["texts"][0]
    assert down["multiple_choice_answer"] == majority(down["answers"])


def test_the_question_alone_gives_little_away():
    """The yes/no labels are 50/50 and the world draws a "no" question's colour or class as
    often as a "yes" question's: the best a reader of the question alone can do (the
    majority answer per question text, learned on half the questions) is close to "always
    yes", which scores about what it scores on VQA v2 (61.2%)."""
    cfg = load(Config, "configs/synth/default.yaml", command="synth").synth
    w = World(cfg)
    sc = w.scenes("coco", "coco", 3000)
    writer = TaskWriter(w, np.random.default_rng(0))
    qs = [q for i in range(sc.n) for q in writer.vqa(sc.image(i), 3)]
    qs = [q for q in qs if q["answer_type"] == "yes/no"]
    half = len(qs) // 2

    def credit(answer, q):
        return min(1.0, q["answers"].count(answer) / 3)

    always_yes = np.mean([credit("yes", q) for q in qs])
    table: dict[str, Counter] = {}
    for q in qs[:half]:
        table.setdefault(q["text"], Counter()).update(q["answers"])
    prior = np.mean(
        [
            credit((table.get(q["text"]) or Counter(yes=1)).most_common(1)[0][0], q)
            for q in qs[half:]
        ]
    )
    truth = np.mean([credit(majority(q["answers"]), q) for q in qs])
    assert 0.55 < always_yes < 0.68, always_yes
    assert prior < always_yes + 0.06, (prior, always_yes)
    assert truth == 1.0 and len(qs) > 2000  # the image's answer earns full credit


def test_definite_references_name_one_object(world):
    """'what color is the pizza ?' beside a green and a brown pizza has no truth, only a
    coin flip no model can learn. Every "the/this <ref>" fits one object of its image (a
    false claim or a question about what the photo missed may fit none), and the majority
    answer is that object's."""
    root, _, _ = world
    card = json.loads((root / "world.json").read_text())
    checked, follows = Counter(), []
    for name in ("vqa_p", "vqa_train", "vqa_val", "vizwiz_train", "vizwiz_val",
                 "snli_ve_train", "snli_ve_val"):  # fmt: skip
        for s in read_samples(root / "shards" / name):
            objects = s["meta"]["world_truth"]["objects"]
            for t in s["meta"]["texts"]:
                for fit in referents(t["text"], card, objects):
                    assert len(fit) == 1 or (may_name_nothing(t) and not fit), (name, t, objects)
                    checked[name.split("_")[0]] += 1
                    if fit and name.startswith("vqa") and truth_of(t["text"], fit[0]):
                        follows.append(majority(t["answers"]) == truth_of(t["text"], fit[0]))
    assert checked["vqa"] > 100 and checked["snli"] > 30 and checked["vizwiz"] > 0
    assert len(follows) > 100 and np.mean(follows) > 0.9


def test_look_alike_objects_are_named_apart_or_not_asked():
    """Hand-made scenes: two pizzas that differ only in colour (the demo's coco_000001),
    two that differ in size too, and twins alike in every word."""
    cfg = load(Config, TINY, command="synth").synth
    w = World(cfg)
    card = world_card(w, {}, 0)
    pizza = next(c for c, row in enumerate(w.class_table) if row[1] == "pizza")
    box, sizes = (0.1, 0.1, 0.5, 0.5), ("small", "medium", "large")
    scenes = {
        "colours": [Obj(pizza, 4, 1, box), Obj(pizza, 3, 1, box), Obj(0, 0, 2, box)],
        "sizes": [Obj(pizza, 4, 2, box), Obj(pizza, 3, 1, box)],
        "twins": [Obj(pizza, 4, 1, box), Obj(pizza, 4, 1, box)],
    }
    for name, objs in scenes.items():
        sc = ImageScene(0, objs, [0], 0.0, [], [])
        truth = [{"class": w.class_table[o.cls][1], "color": T.COLORS[o.color],
                  "size": sizes[o.size]} for o in objs]  # fmt: skip
        writer = TaskWriter(w, np.random.default_rng(0))
        texts = []
        for _ in range(100):
            drawn = [writer.vqa(sc, cfg.questions_per_image), writer.vizwiz(sc)]
            drawn += [writer.hypotheses(sc, cfg.hypotheses_per_image), writer.captions(sc, 5)]
            for group in drawn:
                assert len({t["text"] for t in group}) == len(group) >= 1, (name, group)
                for t in group:
                    texts.append(t["text"])
                    for fit in referents(t["text"], card, truth):
                        assert len(fit) == 1 or (may_name_nothing(t) and not fit), (name, t)
        if name == "sizes":  # size tells them apart: "what color is the large pizza ?"
            assert any("the large pizza" in t for t in texts)
        if name == "twins":  # bounded: "two pizzas" or "two green pizzas" in one-noun templates
            one_noun = sum("{b}" not in t for t in T.CAPTION_TEMPLATES)
            assert len(writer.captions(sc, 4 * one_noun)) == 2 * one_noun


def test_texts_of_an_image_are_distinct(world):
    """No caption, question or claim twice on one image (COCO's five captions are five)."""
    root, _, _ = world
    cfg = load(Config, TINY, command="synth").synth
    for name in DATASETS:
        for s in read_samples(root / "shards" / name):
            texts = [t["text"] for t in s["meta"]["texts"]]
            assert len(set(texts)) == len(texts), (name, s["key"], texts)
    want = {"coco_like": cfg.captions_per_image, "vqa_train": cfg.questions_per_image,
            "vqa_p": cfg.questions_per_image, "snli_ve_train": cfg.hypotheses_per_image}  # fmt: skip
    for name, n in want.items():  # an image gets fewer only where its templates allow no more
        full = [len(s["meta"]["texts"]) == n for s in read_samples(root / "shards" / name)]
        assert np.mean(full) > 0.95, name


def test_cc_small_is_the_first_pairs_of_cc(world):
    """The paper's CC-small is a part of CC, not another sample of the web: the same images
    with the same alt-texts, as many as coco_like has."""
    root, manifests, _ = world
    small = read_samples(root / "shards/cc_small_like")
    full = {s["key"]: s for s in read_samples(root / "shards/cc_like")}
    assert len(small) == manifests["coco_like"]["num_samples"] < len(full)
    for s in small:
        f = full[s["key"]]
        assert s["meta"]["texts"] == f["meta"]["texts"]
        assert np.array_equal(s["feats.npy"], f["feats.npy"])


def test_vizwiz_has_unanswerable_questions(world):
    root, _, _ = world
    qs = [t for s in read_samples(root / "shards" / "vizwiz_train") for t in s["meta"]["texts"]]
    assert all(len(q["answers"]) == len(q["answer_confidence"]) == 10 for q in qs)
    unanswerable = [q for q in qs if not q["answerable"]]
    assert 0 < len(unanswerable) < len(qs)
    assert all(q["answer_type"] == "unanswerable" for q in unanswerable)
    assert all(majority(q["answers"]) == "unanswerable" for q in unanswerable)


def test_snli_ve_labels_balanced(world):
    root, _, _ = world
    labels = Counter(
        t["label"]
        for s in read_samples(root / "shards" / "snli_ve_train")
        for t in s["meta"]["texts"]
    )
    assert set(labels) == set(SNLI_LABELS)
    assert all(0.25 < n / sum(labels.values()) < 0.42 for n in labels.values())


def test_mmimdb_genres_depend_on_image_and_plot(world):
    root, _, _ = world
    card = json.loads((root / "world.json").read_text())
    genres = {g["name"]: g for g in card["genres"]}
    samples = read_samples(root / "shards" / "mmimdb_train") + read_samples(
        root / "shards" / "mmimdb_val"
    )
    plots = [s["meta"]["texts"][0] for s in samples]
    assert all(t["kind"] == "plot" and t["genres"] for t in plots)
    assert any(len(t["genres"]) > 1 for t in plots)
    image_cue, text_cue = Counter(), Counter()
    for s, t in zip(samples, plots, strict=True):
        present = {o["class"] for o in s["meta"]["world_truth"]["objects"]}
        words = set(t["text"].split())
        for name, g in genres.items():
            has = name in t["genres"]
            image_cue[has, bool(present & set(g["poster_classes"]))] += 1
            text_cue[has, bool(words & set(g["plot_words"]))] += 1

    def rate(c, has):
        return c[has, True] / max(1, c[has, True] + c[has, False])

    assert rate(image_cue, True) > rate(image_cue, False) + 0.3
    assert rate(text_cue, True) > rate(text_cue, False) + 0.3
    assert rate(image_cue, True) < 0.95 and rate(text_cue, True) < 0.95  # neither alone suffices


# ---------------------------------------------------------------- object storage


def test_synth_to_s3_and_read_back(s3, tmp_path):
    root = s3.url("worlds", "tiny")
    manifests, _ = build(root, "synth.sizes.cc_like=24", "synth.sizes.coco_like=24")
    storage = Storage()
    assert json.loads(storage.read_text(f"{root}/world.json"))["synthetic"] is True
    for name in DATASETS:
        index = json.loads(storage.read_text(f"{root}/shards/{name}/index.json"))
        assert index["shards"] == manifests[name]["shards"]
        assert storage.exists(f"{root}/shards/{name}/tokenizer/tokenizer_config.json")
    shard = manifests["vqa_train"]["shards"][0]
    data = storage.read_bytes(f"{root}/shards/vqa_train/{shard['name']}")
    assert len(data) == shard["bytes"]
    local = tmp_path / shard["name"]
    local.write_bytes(data)
    with tarfile.open(local) as tf:
        names = tf.getnames()
    assert len(names) == 4 * shard["num_samples"]
    assert {n.split(".", 1)[1] for n in names} == {"feats.npy", "boxes.npy", "cls_prob.npy", "json"}
