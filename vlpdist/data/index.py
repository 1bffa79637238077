"""What the loader knows before the first batch: manifests, tokenizer ids, label
vocabularies. Read once per loader in the training process (cheap: a few JSON files).

The plan is the manifests' and nothing else: a shard's health is decided by its content
when it is read (a missing object, a short or corrupt sample; see loader.py), never by a
request before the epoch that a throttled store may answer with an error. So every rank,
every attempt and every resume plans the same samples. Only `data.verify_sha256`, which
reads whole shards, excludes a shard up front, for what its bytes are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from vlpdist.config import DataConfig
from vlpdist.data.answers import vocab_from_doc
from vlpdist.data.masking import STOP_WORDS
from vlpdist.data.plan import SourcePlan
from vlpdist.errors import ShardError, StorageError, VlpdistError
from vlpdist.shards.reader import load_manifest
from vlpdist.shards.writer import LABELS
from vlpdist.storage import Storage, join

log = logging.getLogger(__name__)


@dataclass
class Source:
    url: str
    name: str
    weight: float
    manifest: dict
    shard_urls: list[str]
    offsets: list[np.ndarray]
    plan: SourcePlan
    excluded: dict[str, str] = field(default_factory=dict)  # shard URL -> why


def open_source(storage: Storage, cfg: DataConfig, url: str, weight: float) -> Source:
    m = load_manifest(storage, url)
    if m.get("regions_only"):
        raise ShardError(
            f"{url}: a set of image regions without texts (vlpdist shards extract); build a "
            "task over it (inputs.features) or caption it (vlpdist shards caption) to train on it"
        )
    shard_urls = [join(url, s["name"]) for s in m["shards"]]
    samples = np.array([s["num_samples"] for s in m["shards"]], dtype=np.int64)
    texts = [
        np.asarray(s.get("texts") or [1] * s["num_samples"], dtype=np.int64) for s in m["shards"]
    ]
    excluded = {}
    for i, (shard, surl) in enumerate(zip(m["shards"], shard_urls, strict=True)):
        why = _sha256_problem(storage, surl, shard) if cfg.verify_sha256 else None
        if why and cfg.on_corrupt == "fail":
            raise ShardError(f"{surl}: {why} (data.on_corrupt=fail)")
        if why:
            excluded[surl] = why
            samples[i] = 0
            log.warning("data: skipping shard %s: %s (%d samples)", surl, why, shard["num_samples"])
    return Source(
        url=url,
        name=m["dataset"],
        weight=weight,
        manifest=m,
        shard_urls=shard_urls,
        offsets=[np.asarray(s["offsets"], dtype=np.int64) for s in m["shards"]],
        plan=SourcePlan(samples=samples, texts=texts, weight=weight),
        excluded=excluded,
    )


def _sha256_problem(storage: Storage, url: str, shard: dict) -> str | None:
    """What is wrong with a shard's bytes, or None. A store that keeps failing is not a
    property of the shard: that error stops the run."""
    digest = hashlib.sha256()
    try:
        for chunk in storage.iter_chunks(url):
            digest.update(chunk)
    except StorageError as e:
        if e.kind == "not_found":
            return "not found"
        raise
    if digest.hexdigest() != shard["sha256"]:
        return "sha256 mismatch"
    return None


def open_sources(storage: Storage, cfg: DataConfig) -> list[Source]:
    if not cfg.sources:
        raise VlpdistError("data.sources: no shard set to stream")
    sources = [open_source(storage, cfg, s.url, s.weight) for s in cfg.sources]
    first = sources[0].manifest
    for s in sources[1:]:
        for key in ("feature_dim",):
            if s.manifest[key] != first[key]:
                raise ShardError(f"{s.url}: {key} {s.manifest[key]} differs from {sources[0].url}")
        if (s.manifest.get("tokenizer") or {}).get("sha256") != (first.get("tokenizer") or {}).get(
            "sha256"
        ):
            raise ShardError(f"{s.url}: its tokenizer differs from {sources[0].url}'s")
    if all(s.plan.samples.sum() == 0 for s in sources):
        raise ShardError(f"{cfg.sources[0].url}: no readable shard in any source")
    return sources


@dataclass
class TokenInfo:
    """The special ids collation needs, from the shard set's own tokenizer."""

    cls: int
    sep: int
    pad: int
    mask: int
    vocab_size: int
    special: tuple[int, ...]
    function: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Ids of stop words and punctuation (masking.STOP_WORDS): never masked as content."""
    pieces: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Ids of WordPiece continuations ('##s'): part of the word before them."""


@dataclass(frozen=True)
class Tokenizer:
    """A shard set's tokenizer, fetched once per process: its files (a vocabulary and a
    small config, held in memory, so that forked loader workers, a second loader and the
    exports need no download or directory of their own) and the ids collation needs."""

    sha256: str | None
    files: dict[str, bytes]
    info: TokenInfo

    def save(self, directory: str) -> str:
        """The tokenizer's files in a local `directory` (what `from_pretrained` reads)."""
        return _write(self.files, directory)


def _write(files: dict[str, bytes], directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    return directory


def fetch_tokenizer(storage: Storage, source: Source, reuse: Tokenizer | None = None) -> Tokenizer:
    """The shard set's tokenizer (its files copied next to its shards at build); `reuse`, one
    this process already fetched, is taken as it is when it is this set's."""
    meta = source.manifest.get("tokenizer")
    if not meta:
        raise ShardError(f"{source.url}: the manifest records no tokenizer")
    if reuse is not None:
        if reuse.sha256 != meta.get("sha256"):
            raise ShardError(f"{source.url}: its tokenizer differs from the training set's")
        return reuse
    files = {
        name: storage.read_bytes(join(source.url, meta["path"], name)) for name in meta["files"]
    }
    with tempfile.TemporaryDirectory() as tmp:
        return Tokenizer(meta.get("sha256"), files, token_info(_write(files, tmp)))


def token_info(directory: str) -> TokenInfo:
    """The special ids of the tokenizer saved in a local `directory`."""
    from transformers import AutoTokenizer  # heavy; once per loader

    tok = AutoTokenizer.from_pretrained(directory)
    special = set(tok.all_special_ids)
    vocab = tok.get_vocab()
    function = [i for w, i in vocab.items() if i not in special
                and (w in STOP_WORDS or not any(c.isalnum() for c in w))]  # fmt: skip
    pieces = [i for w, i in vocab.items() if w.startswith("##")]
    return TokenInfo(
        cls=tok.cls_token_id,
        sep=tok.sep_token_id,
        pad=tok.pad_token_id,
        mask=tok.mask_token_id,
        vocab_size=len(tok),
        special=tuple(sorted(special)),
        function=np.array(sorted(function), dtype=np.int64),
        pieces=np.array(sorted(pieces), dtype=np.int64),
    )


def load_labels(storage: Storage, url: str) -> dict:
    """The labels.json of a shard set (answer, genre and class counts of its train split)."""
    manifest = load_manifest(storage, url)
    if "labels" not in manifest:
        raise ShardError(f"{url}: no {LABELS} (the set has no answers, genres or labels to learn)")
    return json.loads(storage.read_text(join(url, manifest["labels"])))


def answer_vocab(storage: Storage, url: str, min_count: int) -> list[str]:
    labels = load_labels(storage, url)
    if "answers" not in labels:
        raise ShardError(f"{join(url, LABELS)}: no answer counts")
    vocab = vocab_from_doc(labels["answers"], min_count)
    if not vocab:
        raise ShardError(
            f"{join(url, LABELS)}: no answer reaches data.answer_min_count={min_count}"
        )
    return vocab


def name_vocab(storage: Storage, url: str, key: str) -> list[str]:
    """The names counted under `key` of labels.json ("genres", or "label"/"labels" of a
    JSON-lines task), sorted: every name of the train split is a class."""
    labels = load_labels(storage, url)
    if key not in labels:
        counted = ", ".join(labels) or "nothing"
        raise ShardError(f"{join(url, LABELS)}: no '{key}' counts (it counts {counted})")
    return sorted(labels[key])
