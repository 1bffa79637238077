"""The shard sample: what one image with its texts looks like on disk.

A sample is four tar members sharing a key (webdataset convention, `key.ext`):
  feats.npy     float16 [N, D]  region features
  boxes.npy     float32 [N, 4]  x1, y1, x2, y2 normalised to [0, 1] by image width/height
  cls_prob.npy  float16 [N, C]  detector class distribution (optional)
  json          {"image_id", "width", "height", "source", "split", "texts": [...]}

Every text record has "kind" (caption | question | hypothesis | plot | text), "text" and
"ids" (token ids of the manifest's tokenizer, no special tokens). Task fields by kind:
  question:   "question_id", "answers" (all human answers), optional "answer_ids"
              (VQA-P pretraining), "answer_type", "multiple_choice_answer" (VQA v2),
              "answerable" and "answer_confidence" (VizWiz); "line" (JSON-lines tasks, whose
              "question_id" is the record's optional "id")
  hypothesis: "pair_id", "label" (entailment | neutral | contradiction)
  plot:       "genres" (list of genre names)
  caption:    optional "caption_id", "url" (Conceptual Captions)
  text:       a text of your own task (JSON lines, sources/jsonl.py) with its class: "label"
              (one class name) or "labels" (a list of names); "line", optional "text_id" (the
              record's "id")
Arrays are .npy (no pickle: read with allow_pickle=False), so plain tar, numpy and
webdataset can read a shard without vlpdist.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field

import numpy as np

FORMAT = "vlpdist-shards"
VERSION = 1
INDEX = "index.json"  # the manifest; written last, it commits the shard set
FEATS, BOXES, CLS_PROB, META = "feats.npy", "boxes.npy", "cls_prob.npy", "json"
TEXT_KINDS = ("caption", "question", "hypothesis", "plot", "text")
SNLI_LABELS = ("entailment", "neutral", "contradiction")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass
class Sample:
    """One image: its regions and all its texts."""

    key: str
    feats: np.ndarray
    boxes: np.ndarray
    meta: dict
    cls_prob: np.ndarray | None = None
    extra: dict = field(default_factory=dict)  # never written; builders' scratch space

    @property
    def texts(self) -> list[dict]:
        return self.meta.get("texts", [])


def make_key(image_id: object) -> str:
    """A tar-safe sample key: no dots (webdataset splits key and extension at the first
    dot in the basename) and no slashes."""
    key = _KEY_BAD.sub("_", str(image_id)).strip("_")
    if not key:
        raise ValueError(f"image id {image_id!r} gives an empty sample key")
    return key[:80]


def normalise_boxes(boxes_px: np.ndarray, width: float, height: float) -> np.ndarray:
    """Pixel x1,y1,x2,y2 → [0,1] by image size, clipped."""
    b = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float64)
    return np.clip(b / scale, 0.0, 1.0).astype(np.float32)


def check(
    sample: Sample, feature_dim: int | None, cls_dim: int | None, need_texts: bool = True
) -> str | None:
    """Why `sample` cannot be written, or None. Builders turn a reason into a counted skip.
    A set of regions only (`vlpdist shards extract`) has samples without texts."""
    f, b, c = sample.feats, sample.boxes, sample.cls_prob
    if f.ndim != 2 or f.shape[0] == 0:
        return f"features must be [N, D] with N >= 1, got shape {tuple(f.shape)}"
    if feature_dim is not None and f.shape[1] != feature_dim:
        return f"feature dim {f.shape[1]} != {feature_dim} of this dataset"
    if b.shape != (f.shape[0], 4):
        return f"boxes shape {tuple(b.shape)} does not match {f.shape[0]} regions"
    if not np.isfinite(b).all() or b.min() < 0 or b.max() > 1:
        return "boxes are not normalised to [0, 1]"
    if c is not None:
        if c.ndim != 2 or c.shape[0] != f.shape[0]:
            return f"cls_prob shape {tuple(c.shape)} does not match {f.shape[0]} regions"
        if cls_dim is not None and c.shape[1] != cls_dim:
            return f"cls_prob has {c.shape[1]} classes, this dataset {cls_dim}"
    if not np.isfinite(f).all():
        return "features contain NaN or inf"
    meta = sample.meta
    for k in ("image_id", "width", "height", "source", "texts"):
        if k not in meta:
            return f"json is missing '{k}'"
    if need_texts and not meta["texts"]:
        return "no texts"
    for t in meta["texts"]:
        if t.get("kind") not in TEXT_KINDS or not isinstance(t.get("text"), str):
            return f"bad text record {str(t)[:80]}"
    return None


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode(sample: Sample) -> dict[str, bytes]:
    """Tar members of one sample (keys as webdataset writes them)."""
    members = {
        "__key__": sample.key,
        FEATS: npy_bytes(sample.feats.astype(np.float16, copy=False)),
        BOXES: npy_bytes(sample.boxes.astype(np.float32, copy=False)),
        META: json.dumps(sample.meta, ensure_ascii=False, separators=(",", ":")).encode(),
    }
    if sample.cls_prob is not None:
        members[CLS_PROB] = npy_bytes(sample.cls_prob.astype(np.float16, copy=False))
    return members


def decode(key: str, members: dict[str, bytes]) -> Sample:
    missing = [m for m in (FEATS, BOXES, META) if m not in members]
    if missing:
        raise ValueError(f"sample {key!r} lacks {', '.join(missing)}")
    return Sample(
        key=key,
        feats=load_npy(members[FEATS]),
        boxes=load_npy(members[BOXES]),
        cls_prob=load_npy(members[CLS_PROB]) if CLS_PROB in members else None,
        meta=json.loads(members[META]),
    )
