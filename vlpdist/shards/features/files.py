"""One file (or two) per image: MMF's `<id>.npy` + `<id>_info.npy`, and `.npz` archives.

Both are read with allow_pickle=False. The one pickle in these layouts, MMF's info dict,
goes through the restricted unpickler (see unpickle.py).
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np

from vlpdist.errors import SourceError
from vlpdist.shards.features import (
    BadFeatures,
    FeatureStore,
    Regions,
    list_files,
    regions_from_record,
)
from vlpdist.shards.features.unpickle import CorruptPickle, load_npy_object
from vlpdist.storage import Storage

INFO_SUFFIX = "_info.npy"


def _files_with(storage: Storage, urls: list[str], suffix: str) -> list[str]:
    out = []
    for url in urls:
        out.extend(list_files(storage, url) if not url.endswith(suffix) else [url])
    return [u for u in out if u.endswith(suffix)]


def _stem(url: str, suffix: str) -> str:
    return os.path.basename(url)[: -len(suffix)]


class NpyFeatures(FeatureStore):
    """MMF layout (extract_features_vmb.py): `<id>.npy` float32 [N, D] and `<id>_info.npy`,
    an `np.save`d dict with bbox (pixels), num_boxes, image_width, image_height and optional
    cls_prob, objects."""

    fmt = "npy"

    def __init__(self, storage: Storage, urls: list[str]):
        self.storage = storage
        files = _files_with(storage, urls, ".npy")
        self.info = {_stem(u, INFO_SUFFIX): u for u in files if u.endswith(INFO_SUFFIX)}
        self.feats = {_stem(u, ".npy"): u for u in files if not u.endswith(INFO_SUFFIX)}
        if not self.feats:
            raise SourceError(f"{urls[0]}: no <id>.npy feature files")
        super().__init__(self.feats)

    def load(self, key: str) -> Regions:
        url = self.feats[key]
        where = os.path.basename(url)
        if key not in self.info:
            raise BadFeatures(f"no {INFO_SUFFIX} next to the features (boxes, image size)", where)
        try:
            feats = np.load(io.BytesIO(self.storage.read_bytes(url)), allow_pickle=False)
        except ValueError as e:  # also what numpy raises for a pickled (object) array
            raise BadFeatures(f"unreadable .npy ({str(e).splitlines()[0][:80]})", where) from None
        info_url = self.info[key]
        try:
            info = load_npy_object(self.storage.read_bytes(info_url), os.path.basename(info_url))
        except CorruptPickle as e:
            raise BadFeatures(f"unreadable {INFO_SUFFIX}", str(e)) from None
        if not isinstance(info, dict):
            raise BadFeatures(f"{INFO_SUFFIX} holds {type(info).__name__}, not a dict", where)
        try:
            return regions_from_record({**info, "features": feats})
        except BadFeatures as e:
            e.where = where
            raise


class NpzFeatures(FeatureStore):
    """`<id>.npz` per image (py-bottom-up-attention / bottom-up-attention.pytorch):
    x or features, bbox or boxes, image_w/image_h or image_width/image_height, optional
    num_bbox and cls_prob. Pickled members (e.g. `info`) are never unpickled."""

    fmt = "npz"

    def __init__(self, storage: Storage, urls: list[str]):
        self.storage = storage
        self.files = {_stem(u, ".npz"): u for u in _files_with(storage, urls, ".npz")}
        if not self.files:
            raise SourceError(f"{urls[0]}: no <id>.npz feature files")
        super().__init__(self.files)

    def load(self, key: str) -> Regions:
        url = self.files[key]
        where = os.path.basename(url)
        try:
            rec = {}
            with np.load(io.BytesIO(self.storage.read_bytes(url)), allow_pickle=False) as z:
                for name in z.files:
                    try:
                        rec[name] = z[name]
                    except ValueError:  # a pickled member (e.g. `info`): not needed, not read
                        continue
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise BadFeatures(f"unreadable .npz ({str(e).splitlines()[0][:80]})", where) from None
        try:
            return regions_from_record(rec)
        except BadFeatures as e:
            e.where = where
            raise
