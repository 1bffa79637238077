"""Tiny files in the exact layouts of the public releases, for the shard-builder tests,
and a reader of built shard sets that uses only tarfile + numpy.

Feature writers take {feature key: Img} and write what the public extraction scripts
write: bottom-up-attention TSV (BUTD or LXMERT field order), MMF's <id>.npy + <id>_info.npy
(the info is an np.save'd dict, i.e. a pickle), py-bottom-up-attention .npz, MMF LMDB.
"""

from __future__ import annotations

import base64
import csv
import json
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlpdist.config import Recipe, load
from vlpdist.shards import schema


@dataclass
class Img:
    width: int
    height: int
    feats: np.ndarray  # float32 [N, D]
    boxes: np.ndarray  # float32 [N, 4] pixels
    cls_prob: np.ndarray | None = None

    def norm_boxes(self) -> np.ndarray:
        return (self.boxes / [self.width, self.height, self.width, self.height]).astype(np.float32)


def make_img(seed: int, n: int = 3, dim: int = 16, classes: int | None = None) -> Img:
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(200, 640)), int(rng.integers(200, 480))
    x1 = rng.uniform(0, w / 2, n)
    y1 = rng.uniform(0, h / 2, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, w / 2, n), y1 + rng.uniform(1, h / 2, n)], 1)
    cls = None if classes is None else rng.dirichlet(np.ones(classes), n).astype(np.float32)
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    return Img(w, h, feats, boxes.astype(np.float32), cls)


def b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.float32).tobytes()).decode()


def write_tsv(path: Path, images: dict[str, Img], layout: str = "butd") -> None:
    """As generate_tsv.py writes it: csv.DictWriter(delimiter='\\t'), no header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        if layout == "butd":
            fields = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
        else:
            fields = ["img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id"]
            fields += ["attrs_conf", "num_boxes", "boxes", "features"]
        w = csv.DictWriter(f, fieldnames=fields, delimiter="\t")
        for key, im in images.items():
            n = len(im.feats)
            row = {"num_boxes": n, "boxes": b64(im.boxes), "features": b64(im.feats)}
            if layout == "butd":
                row.update(image_id=key, image_w=im.width, image_h=im.height)
            else:
                ints = base64.b64encode(np.arange(n, dtype=np.int64).tobytes()).decode()
                row.update(img_id=key, img_h=im.height, img_w=im.width, objects_id=ints)
                row.update(objects_conf=b64(np.ones(n)), attrs_id=ints, attrs_conf=b64(np.ones(n)))
            w.writerow(row)


def write_npy(directory: Path, images: dict[str, Img]) -> None:
    """MMF extract_features_vmb.py: np.save(<id>.npy, feats); np.save(<id>_info.npy, dict)."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, im in images.items():
        np.save(directory / f"{key}.npy", im.feats)
        info = {
            "bbox": im.boxes,
            "num_boxes": len(im.feats),
            "objects": np.arange(len(im.feats)),
            "image_width": im.width,
            "image_height": im.height,
        }
        if im.cls_prob is not None:
            info["cls_prob"] = im.cls_prob
        np.save(directory / f"{key}_info.npy", info, allow_pickle=True)


def write_npz(directory: Path, images: dict[str, Img]) -> None:
    """bottom-up-attention.pytorch extract_features.py: savez_compressed with a pickled info."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, im in images.items():
        info = {"objects_id": np.arange(len(im.feats)), "objects_conf": np.ones(len(im.feats))}
        np.savez_compressed(
            directory / f"{key}.npz",
            x=im.feats,
            bbox=im.boxes,
            num_bbox=len(im.feats),
            image_h=im.height,
            image_w=im.width,
            info=np.array(info, dtype=object),
        )


def write_lmdb(path: Path, images: dict[str, Img]) -> None:
    """MMF lmdb_conversion.py: key = id, value = pickle of the info dict; b'keys' = ids."""
    import lmdb

    path.parent.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, im in images.items():
            item = {
                "image_id": key,
                "features": im.feats,
                "bbox": im.boxes,
                "num_boxes": len(im.feats),
                "image_width": im.width,
                "image_height": im.height,
            }
            txn.put(key.encode(), pickle.dumps(item))
        txn.put(b"keys", pickle.dumps([k.encode() for k in images]))
    env.close()


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def karpathy(images: list[tuple[int, str, list[str]]]) -> dict:
    """dataset_coco.json from (cocoid, split, captions)."""
    out, sid = [], 0
    for i, (cocoid, split, caps) in enumerate(images):
        folder = "val2014" if split in ("val", "test", "restval") else "train2014"
        sents = []
        for c in caps:
            sents.append({"tokens": c.lower().split(), "raw": c, "imgid": i, "sentid": sid})
            sid += 1
        out.append(
            {
                "filepath": folder,
                "sentids": [s["sentid"] for s in sents],
                "filename": f"COCO_{folder}_{cocoid:012d}.jpg",
                "imgid": i,
                "split": split,
                "sentences": sents,
                "cocoid": cocoid,
            }
        )
    return {"images": out, "dataset": "coco"}


def vqa_answers(answers: list[str]) -> list[dict]:
    return [
        {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)
    ]


def snli_ve_line(image: str, n: int, premise: str, hypothesis: str, label: str) -> str:
    """One line of snli_ve_<split>.jsonl as the original snli_ve_generator.py (linked from the
    SNLI-VE README) writes it: the SNLI 1.0 record, plus "Flikr30kID" (sic) = the image file
    name with its '.jpg', every key sorted. `n` picks the caption (#n) and the pair suffix."""
    rec = {
        "annotator_labels": [label] * 5,
        "captionID": f"{image}.jpg#{n}",
        "gold_label": label,
        "pairID": f"{image}.jpg#{n}r1{label[0]}",
        "sentence1": premise,
        "sentence1_binary_parse": "( " + " ".join(premise.rstrip(".").split()) + " )",
        "sentence1_parse": "(ROOT (S " + premise + "))",
        "sentence2": hypothesis,
        "sentence2_binary_parse": "( " + " ".join(hypothesis.rstrip(".").split()) + " )",
        "sentence2_parse": "(ROOT (S " + hypothesis + "))",
        "Flikr30kID": f"{image}.jpg",
    }
    return json.dumps(dict(sorted(rec.items())))


RECIPES = Path(__file__).resolve().parents[1] / "shards"


def recipe(name: str, root: Path, tok: str, *overrides: str) -> Recipe:
    base = [f"root={root}", f"shards.tokenizer={tok}", "shards.progress=false"]
    return load(Recipe, str(RECIPES / f"{name}.yaml"), [*base, *overrides])


def read_set(out: Path) -> tuple[dict, dict[str, schema.Sample]]:
    """index.json and every sample, read with plain tarfile and schema.decode (numpy)."""
    manifest = json.loads((out / "index.json").read_text())
    samples = {}
    for shard in manifest["shards"]:
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(out / shard["name"]) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        assert len(members) == shard["num_samples"]
        for key, parts in members.items():
            samples[key] = schema.decode(key, parts)
    return manifest, samples


def skips(manifest: dict) -> list[tuple[str, str, str]]:
    return [
        (s["item"], s["reason"], s.get("where", "")) for s in manifest["build_report"]["skipped"]
    ]
