"""Region features in the formats people hold, behind one interface.

`open_features(storage, url, fmt, ...)` gives a `FeatureStore`: `lookup(image_id)` finds the
key of an image (exact id, file stem, or the trailing integer as MMF does), `load(key)` gives
`Regions` (float16 features, boxes normalised to [0, 1], image size, optional cls_prob) or
raises `BadFeatures`, which the builders count as a skip.

Formats (see shards/README.md): bottom-up-attention TSV (BUTD 6 fields, LXMERT 10 fields,
or named by `tsv_fields`), per-image `<id>.npy` + `<id>_info.npy` (MMF), per-image `.npz`
(py-bottom-up-attention), MMF LMDB (opt-in: its values are pickles), and a committed
vlpdist shard set (`shards`: what `vlpdist shards extract` writes from images).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from vlpdist.errors import SourceError
from vlpdist.shards.schema import INDEX, normalise_boxes
from vlpdist.storage import Storage, join, split_protocol

FORMATS = ("auto", "tsv", "npy", "npz", "lmdb", "shards")
_TRAILING_INT = re.compile(r"(\d+)$")
_GLOB_CHARS = re.compile(r"[*?\[]")
_TSV_NAME = re.compile(r"\.tsv(\.\d+)?$")


class BadFeatures(Exception):  # noqa: N818 - a counted skip, not a failure
    """This image's features cannot be used; `reason` becomes the skip reason."""

    def __init__(self, reason: str, where: str | None = None):
        super().__init__(reason)
        self.reason, self.where = reason, where


@dataclass
class Regions:
    feats: np.ndarray  # float16 [N, D]
    boxes: np.ndarray  # float32 [N, 4], x1 y1 x2 y2 in [0, 1]
    width: int
    height: int
    cls_prob: np.ndarray | None = None  # float16 [N, C]


class FeatureStore:
    """Base class: an index from feature keys to locations, plus id matching."""

    fmt = "?"

    def __init__(self, keys: Iterable[str]):
        self._keys = set(keys)
        self._by_int: dict[int, str | None] | None = None
        self.notes: list[str] = []  # go into the build report

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, image_id: object) -> str | None:
        """The feature key of `image_id`, or None. Tries the id itself, its file stem
        ('VizWiz_train_0001.jpg' -> 'VizWiz_train_0001'), then, for numeric ids, the key
        ending in that number ('COCO_val2014_000000000042' for 42) as MMF's readers do."""
        s = str(image_id)
        if s in self._keys:
            return s
        stem = os.path.splitext(os.path.basename(s))[0]
        if stem in self._keys:
            return stem
        if stem.isdigit():
            return self._int_index().get(int(stem))
        return None

    def _int_index(self) -> dict[int, str | None]:
        if self._by_int is None:
            self._by_int = {}
            for k in self._keys:
                # keys kept with their file name ('2248275918.jpg') match by the stem
                m = _TRAILING_INT.search(os.path.splitext(k)[0])
                if m:
                    n = int(m.group(1))
                    # two keys ending in the same number (train2014 vs val2014 copies):
                    # ambiguous, so neither is picked by number
                    self._by_int[n] = None if n in self._by_int else k
        return self._by_int

    def load(self, key: str) -> Regions:
        raise NotImplementedError

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- one record -> Regions


def _first(rec: Mapping, names: tuple[str, ...], required: bool = True):
    for n in names:
        if n in rec and rec[n] is not None:
            return rec[n]
    if required:
        raise BadFeatures(f"no '{names[0]}' field (also tried {', '.join(names[1:])})")
    return None


def _number(value, name: str) -> int:
    if isinstance(value, bytes | bytearray):
        value = value.decode("ascii", "replace")
    try:
        return int(float(np.asarray(value).item() if isinstance(value, np.ndarray) else value))
    except (TypeError, ValueError):
        raise BadFeatures(f"'{name}' is not a number") from None


def _array(value, rows: int | None, cols: int | None, name: str) -> np.ndarray:
    """An array as stored (ndarray) or as base64 of float32 (TSV, ViLBERT-style LMDB)."""
    if isinstance(value, bytes | bytearray | str):
        try:
            value = np.frombuffer(base64.b64decode(value, validate=True), dtype=np.float32)
        except (binascii.Error, ValueError):
            raise BadFeatures(f"'{name}' is neither an array nor base64 float32") from None
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise BadFeatures(f"'{name}' has dtype {arr.dtype}, expected numbers")
    try:
        if rows is not None and arr.ndim == 1:
            arr = arr.reshape(rows, -1)
        elif cols is not None and arr.ndim == 1:
            arr = arr.reshape(-1, cols)
    except ValueError:
        raise BadFeatures(
            f"'{name}' of {arr.size} values does not split into {rows} rows"
        ) from None
    return arr


def regions_from_record(rec: Mapping) -> Regions:
    """Regions from a dict using any of the key spellings of BUTD, LXMERT, MMF, ViLBERT and
    py-bottom-up-attention. Pixel boxes are normalised by the image size; rows beyond
    `num_boxes` (MMF pads to a fixed count) are dropped."""
    width = _number(_first(rec, ("image_w", "image_width", "img_w")), "image_w")
    height = _number(_first(rec, ("image_h", "image_height", "img_h")), "image_h")
    if width <= 0 or height <= 0:
        raise BadFeatures("image width/height must be > 0")
    n_raw = _first(rec, ("num_boxes", "num_bbox"), required=False)
    n = None if n_raw is None else _number(n_raw, "num_boxes")
    boxes = _array(_first(rec, ("boxes", "bbox")), n, 4, "boxes")
    if n is None:
        n = boxes.shape[0]
    feats = _array(_first(rec, ("features", "x")), n, None, "features")
    cls_raw = _first(rec, ("cls_prob",), required=False)
    cls_prob = None if cls_raw is None else _array(cls_raw, n, None, "cls_prob")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise BadFeatures(f"boxes have shape {boxes.shape}, expected [N, 4]")
    if feats.ndim != 2 or feats.shape[0] < n or boxes.shape[0] < n:
        raise BadFeatures(f"features {feats.shape} / boxes {boxes.shape} for {n} regions")
    return Regions(
        feats=feats[:n].astype(np.float16),
        boxes=normalise_boxes(boxes[:n], width, height),
        width=width,
        height=height,
        cls_prob=None if cls_prob is None else cls_prob[:n].astype(np.float16),
    )


# ---------------------------------------------------------------- opening a store


def expand(storage: Storage, url: str, what: str = "features") -> list[str]:
    """URLs matching a glob pattern (or [url]); one-line error when nothing is there."""
    found = storage.glob(url)
    if not found:
        why = f"no {what} match this pattern" if _GLOB_CHARS.search(url) else f"{what} not found"
        raise SourceError(f"{url}: {why}")
    return found


def list_files(storage: Storage, url: str) -> list[str]:
    """All files under a directory URL, recursively, as URLs."""
    fs, path = storage.filesystem(url)
    proto = split_protocol(url)[0]
    prefix = "" if proto == "file" else f"{proto}://"
    return sorted(prefix + p for p in storage.call("list", url, lambda: fs.find(path)))


def detect(storage: Storage, urls: list[str]) -> str:
    first = urls[0].rstrip("/")
    if all(_TSV_NAME.search(u) for u in urls):
        return "tsv"
    if first.endswith(".lmdb") or first.endswith(".mdb"):
        return "lmdb"
    fs, path = storage.filesystem(first)
    if storage.call("check", first, lambda: fs.isdir(path)):
        if storage.exists(join(first, INDEX)):
            return "shards"
        if storage.exists(first + "/data.mdb"):
            return "lmdb"
        names = list_files(storage, first)
        if any(n.endswith(".npz") for n in names):
            return "npz"
        if any(n.endswith(".npy") for n in names):
            return "npy"
    raise SourceError(
        f"{first}: cannot tell the feature format; set options.features_format to one of "
        + ", ".join(FORMATS[1:])
    )


def open_features(
    storage: Storage,
    url: str,
    fmt: str = "auto",
    *,
    tsv_fields: list[str] | None = None,
    trust_pickle: bool = False,
) -> FeatureStore:
    """Index the features at `url` (a file, directory or glob) in format `fmt`."""
    if fmt not in FORMATS:
        raise SourceError(f"options.features_format: {fmt!r} is not one of {', '.join(FORMATS)}")
    urls = expand(storage, url)
    if fmt == "auto":
        fmt = detect(storage, urls)
    if fmt == "tsv":
        from vlpdist.shards.features.tsv import TsvFeatures

        return TsvFeatures(storage, urls, tsv_fields)
    if fmt in ("npy", "npz"):
        from vlpdist.shards.features.files import NpyFeatures, NpzFeatures

        cls = NpyFeatures if fmt == "npy" else NpzFeatures
        return cls(storage, urls)
    if fmt == "shards":
        from vlpdist.shards.features.shardset import ShardSetFeatures

        if len(urls) != 1:
            raise SourceError(f"{url}: name one shard set directory, not a pattern")
        return ShardSetFeatures(storage, urls[0])
    from vlpdist.shards.features.mmf_lmdb import LmdbFeatures

    return LmdbFeatures(storage, urls, trust_pickle)
