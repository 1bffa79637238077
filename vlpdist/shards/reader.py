"""Reading a committed shard set offline: manifest, samples, `verify` and `inspect`.

The online, resumable streaming path lives in the `data` package (above this one); this
module is what tools and tests use to look at a shard set as a whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from vlpdist.errors import ShardError, StorageError
from vlpdist.shards import schema
from vlpdist.shards.schema import INDEX
from vlpdist.shards.tokenize import files_digest
from vlpdist.storage import Storage, join

REQUIRED = ("format", "version", "dataset", "feature_dim", "num_samples", "shards")


def load_manifest(storage: Storage, url: str) -> dict:
    """The manifest of the shard set at `url` (a dataset directory), checked."""
    index_url = join(url, INDEX)
    try:
        text = storage.read_text(index_url)
    except StorageError as e:
        if str(e).endswith("not found"):
            raise ShardError(
                f"{index_url}: not found (not a shard set, or its build never committed)"
            ) from None
        raise
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise ShardError(f"{index_url}: not valid JSON ({e.msg} at line {e.lineno})") from None
    missing = [k for k in REQUIRED if k not in manifest]
    if missing or manifest.get("format") != schema.FORMAT:
        raise ShardError(f"{index_url}: not a {schema.FORMAT} manifest (missing {missing})")
    if manifest["version"] > schema.VERSION:
        raise ShardError(
            f"{index_url}: format version {manifest['version']} is newer than this vlpdist"
        )
    return manifest


def split_member(name: str) -> tuple[str, str]:
    """'dir/key.feats.npy' → ('key', 'feats.npy'): webdataset's key/extension rule."""
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    return key, ext


def iter_members(fileobj) -> Iterator[tuple[str, int, int, dict[str, bytes]]]:
    """Group a tar stream into samples: (key, first header offset, data end, members)."""
    key, start, end, members = None, 0, 0, {}
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            k, ext = split_member(info.name)
            if k != key:
                if key is not None:
                    yield key, start, end, members
                key, start, members = k, info.offset, {}
            members[ext] = tar.extractfile(info).read()
            end = info.offset_data + info.size
    if key is not None:
        yield key, start, end, members


def iter_samples(
    storage: Storage, url: str, manifest: dict | None = None
) -> Iterator[schema.Sample]:
    """Every sample of the set, in shard order."""
    manifest = manifest or load_manifest(storage, url)
    for shard in manifest["shards"]:
        with storage.open_read(join(url, shard["name"])) as f:
            for key, _, _, members in iter_members(f):
                yield schema.decode(key, members)


class _Hashing(io.RawIOBase):
    """Pass-through reader that hashes and counts every byte read."""

    def __init__(self, inner):
        self.inner, self.sha, self.count = inner, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.inner.read(len(b))
        n = len(data)
        b[:n] = data
        self.sha.update(data)
        self.count += n
        return n

    def drain(self) -> None:
        while self.inner.read(1 << 22):
            pass


@dataclass
class VerifyReport:
    url: str
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(storage: Storage, url: str) -> VerifyReport:
    """Check every shard against the manifest: sha256, size, per-sample offsets, and that
    each sample decodes with the manifest's dims. Problems name the shard URL."""
    manifest = load_manifest(storage, url)
    report = VerifyReport(url=url)
    for shard in manifest["shards"]:
        shard_url = join(url, shard["name"])
        problems = _verify_shard(storage, shard_url, shard, manifest, report)
        report.problems.extend(f"{shard_url}: {p}" for p in problems)
        report.shards += 1
    report.problems.extend(_verify_tokenizer(storage, url, manifest.get("tokenizer")))
    if report.samples != manifest["num_samples"] and report.ok:
        report.problems.append(
            f"{url}: {report.samples} samples != manifest {manifest['num_samples']}"
        )
    return report


def _verify_shard(
    storage: Storage, shard_url: str, shard: dict, manifest: dict, report
) -> list[str]:
    offsets = shard["offsets"]
    try:
        raw = storage.open_read(shard_url)
    except StorageError as e:
        return [str(e).removeprefix(shard_url + ": ")]
    problems: list[str] = []
    hashing = _Hashing(raw)
    n = 0
    try:
        with raw:
            for key, start, end, members in iter_members(io.BufferedReader(hashing, 1 << 20)):
                if n >= len(offsets) - 1:
                    problems.append(f"more samples than the manifest's {shard['num_samples']}")
                    break
                if start != offsets[n] or end > offsets[n + 1]:
                    problems.append(
                        f"sample {n} ('{key}') at bytes [{start}, {end}) but the manifest says "
                        f"[{offsets[n]}, {offsets[n + 1]})"
                    )
                    break
                why = _check_decoded(key, members, manifest)
                if why:
                    problems.append(f"sample {n} ('{key}'): {why}")
                    break
                n += 1
            hashing.drain()
    except (tarfile.TarError, EOFError, OSError) as e:
        problems.append(f"corrupt or truncated tar after {n} samples: {e}")
    report.samples += n
    report.bytes += hashing.count
    if not problems and n != shard["num_samples"]:
        problems.append(f"{n} samples, the manifest says {shard['num_samples']} (truncated?)")
    if hashing.count != shard["bytes"]:
        problems.append(f"size {hashing.count} bytes, the manifest says {shard['bytes']}")
    if hashing.sha.hexdigest() != shard["sha256"]:
        problems.append("sha256 mismatch (the shard was modified or corrupted)")
    return problems


def _verify_tokenizer(storage: Storage, url: str, tok: dict | None) -> list[str]:
    """The token ids in the shards are only meaningful with the exact vocabulary."""
    if not tok:
        return []
    tok_url = join(url, tok["path"])
    named = []
    for name in tok["files"]:
        try:
            named.append((name, storage.read_bytes(join(tok_url, name))))
        except StorageError as e:
            return [str(e)]
    if files_digest(named) != tok["sha256"]:
        return [f"{tok_url}: tokenizer files do not match the manifest's sha256"]
    return []


def _check_decoded(key: str, members: dict[str, bytes], manifest: dict) -> str | None:
    try:
        sample = schema.decode(key, members)
    except ValueError as e:  # includes numpy's refusal to unpickle and bad JSON
        return f"does not decode: {e}"
    need_texts = not manifest.get("regions_only", False)
    return schema.check(sample, manifest["feature_dim"], manifest.get("cls_prob_dim"), need_texts)


def inspect(storage: Storage, url: str, n_samples: int = 3) -> dict:
    """Counts, dims, sizes and the first few samples, as plain data."""
    m = load_manifest(storage, url)
    sizes = [s["bytes"] for s in m["shards"]]
    report = m.get("build_report", {})
    samples = []
    for i, s in enumerate(iter_samples(storage, url, m)):
        if i == n_samples:
            break
        samples.append(
            {
                "key": s.key,
                "image_id": s.meta.get("image_id"),
                "size": [s.meta.get("width"), s.meta.get("height")],
                "regions": int(s.feats.shape[0]),
                "feats": f"{s.feats.dtype}{list(s.feats.shape)}",
                "cls_prob": None
                if s.cls_prob is None
                else f"{s.cls_prob.dtype}{list(s.cls_prob.shape)}",
                "texts": [_short_text(t) for t in s.texts[:3]],
                "num_texts": len(s.texts),
            }
        )
    return {
        "url": url,
        "dataset": m["dataset"],
        "source": m.get("source"),
        "synthetic": m.get("synthetic", False),
        "num_samples": m["num_samples"],
        "num_texts": m.get("num_texts"),
        "feature_dim": m["feature_dim"],
        "cls_prob_dim": m.get("cls_prob_dim"),
        "tokenizer": {k: (m.get("tokenizer") or {}).get(k) for k in ("name", "vocab_size")},
        "shards": len(sizes),
        "total_mb": round(sum(sizes) / 1e6, 3),
        "shard_mb": [round(min(sizes) / 1e6, 3), round(max(sizes) / 1e6, 3)] if sizes else [],
        "skipped": report.get("skipped_count", 0),
        "skipped_by_reason": report.get("skipped_by_reason", {}),
        "samples": samples,
    }


def _short_text(t: dict) -> dict:
    out = {"kind": t.get("kind"), "text": t.get("text"), "ids": (t.get("ids") or [])[:12]}
    for k in ("answers", "answerable", "label", "labels", "genres"):
        if k in t:
            out[k] = t[k][:10] if isinstance(t[k], list) else t[k]
    return out


def format_inspect(info: dict) -> str:
    lines = [
        f"{info['url']}  dataset={info['dataset']}  source={info['source']}"
        + ("  [SYNTHETIC]" if info["synthetic"] else ""),
        f"  samples {info['num_samples']}, texts {info['num_texts']}, feature dim {info['feature_dim']}, "
        f"cls_prob dim {info['cls_prob_dim']}, tokenizer {info['tokenizer']['name']} "
        f"({info['tokenizer']['vocab_size']} tokens)",
        f"  {info['shards']} shards, {info['total_mb']} MB (shard MB min/max {info['shard_mb']}), "
        f"skipped at build: {info['skipped']} {info['skipped_by_reason'] or ''}".rstrip(),
    ]
    for s in info["samples"]:
        lines.append(
            f"  - {s['key']}: image {s['image_id']} {s['size'][0]}x{s['size'][1]}, "
            f"{s['regions']} regions feats {s['feats']} cls_prob {s['cls_prob']}, {s['num_texts']} texts"
        )
        for t in s["texts"]:
            extra = {k: v for k, v in t.items() if k not in ("kind", "text", "ids")}
            lines.append(f"      {t['kind']}: {t['text']!r} ids={t['ids']} {extra or ''}".rstrip())
    return "\n".join(lines)
