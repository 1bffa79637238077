"""Region features read from a committed vlpdist shard set (format `shards`).

The output of `vlpdist shards extract` is an ordinary shard set, whose samples may have no
texts at all; so is any set built from annotations. Another set's annotations (your own
task as JSON lines, a public dataset) join its features by the sample json's `image_id`.

The manifest does not list image ids (a sample key is the id made tar-safe, which cannot be
turned back), so opening the store reads every shard once, as the TSV reader reads its
files, and keeps each image's byte range; `load` then range-reads one sample.
"""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np

from vlpdist.errors import ShardError, SourceError
from vlpdist.shards import schema
from vlpdist.shards.features import BadFeatures, FeatureStore, Regions
from vlpdist.shards.reader import iter_members, load_manifest
from vlpdist.storage import Storage, join

_BLOCK = 512  # tar block: a sample's bytes end at its last member's padding


class ShardSetFeatures(FeatureStore):
    """The regions (feats, boxes, cls_prob, width and height) of every sample of the shard
    set at `url`, keyed by `str(image_id)`. Texts are neither needed nor read."""

    fmt = "shards"

    def __init__(self, storage: Storage, url: str):
        self.storage, self.url = storage, url.rstrip("/")
        try:
            manifest = load_manifest(storage, self.url)
        except ShardError as e:
            raise SourceError(f"{e} (inputs.features)") from None
        self.where: dict[str, tuple[str, int, int]] = {}  # key -> (shard URL, start, end)
        unreadable = 0
        for shard in manifest["shards"]:
            shard_url = join(self.url, shard["name"])
            with storage.open_read(shard_url) as f:
                try:
                    for _, start, end, members in iter_members(f):
                        image_id = _image_id(members)
                        if image_id is None:
                            unreadable += 1
                            continue
                        self.where[str(image_id)] = (shard_url, start, -(-end // _BLOCK) * _BLOCK)
                except (tarfile.TarError, EOFError) as e:
                    raise SourceError(f"{shard_url}: corrupt or truncated shard ({e})") from None
        if not self.where:
            raise SourceError(f"{self.url}: the shard set holds no sample with an image_id")
        super().__init__(self.where)
        self.notes.append(
            f"features from shard set {self.url} (dataset {manifest['dataset']}, source "
            f"{manifest.get('source')}, {manifest.get('created_by', '?')}, feature dim "
            f"{manifest['feature_dim']})"
        )
        if unreadable:
            self.notes.append(f"{unreadable} samples of {self.url} have no readable json")

    def load(self, key: str) -> Regions:
        shard_url, start, end = self.where[key]
        where = f"{shard_url}@{start}"
        data = self.storage.read_bytes(shard_url, start, end)
        try:
            [(name, _, _, members)] = list(iter_members(io.BytesIO(data)))
            sample = schema.decode(name, members)
        except (ValueError, tarfile.TarError, EOFError) as e:
            raise BadFeatures(f"unreadable sample ({str(e).splitlines()[0][:80]})", where) from None
        width, height = sample.meta.get("width"), sample.meta.get("height")
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)
        ):
            raise BadFeatures("the sample json has no image width/height > 0", where)
        f, b, c = sample.feats, sample.boxes, sample.cls_prob
        if f.ndim != 2 or b.shape != (f.shape[0], 4) or (c is not None and len(c) != len(f)):
            raise BadFeatures(f"features {f.shape} / boxes {b.shape} do not match", where)
        return Regions(
            feats=f.astype(np.float16, copy=False),
            boxes=b.astype(np.float32, copy=False),  # normalised already (the shard format)
            width=width,
            height=height,
            cls_prob=None if c is None else c.astype(np.float16, copy=False),
        )


def _image_id(members: dict[str, bytes]):
    try:
        meta = json.loads(members[schema.META])
    except (KeyError, ValueError):
        return None
    image_id = meta.get("image_id") if isinstance(meta, dict) else None
    return None if image_id is None or image_id == "" else image_id
