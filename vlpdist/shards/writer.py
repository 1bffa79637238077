"""Writing a shard set: tar shards, then `index.json` last (the commit of the dataset).

Manifest (`index.json`) fields:
  format, version, dataset, source, synthetic, regions_only (a set of image regions without
  texts, from `vlpdist shards extract`), feature_dim, cls_prob_dim, box_format,
  num_samples, num_texts, total_bytes, tokenizer{name, path, files, sha256, vocab_size,
  lowercase, max_tokens}, recipe{...}, build_report{...}, extra{...},
  labels ("labels.json" when the set has answers, genres or class labels),
  shards[{name, num_samples, bytes, sha256, offsets, texts}]
`texts` counts the texts of each sample (so questions can be enumerated without reading).
`offsets` has num_samples + 1 entries: sample i occupies bytes [offsets[i], offsets[i+1])
of its shard (its tar headers and members), so a reader can range-read or skip samples
without parsing; the last entry is where the tar's end-of-archive blocks begin.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter

from tqdm import tqdm

from vlpdist import __version__
from vlpdist.errors import ShardError
from vlpdist.shards import schema
from vlpdist.shards.answers import answers_doc, count_answers
from vlpdist.shards.schema import INDEX
from vlpdist.shards.tokenize import TextEncoder
from vlpdist.storage import Storage, join

SHARD_NAME = "{:06d}.tar"
LABELS = "labels.json"
MAX_LISTED_REASONS = 20
TAR_MTIME = 0  # fixed header times: the same input gives byte-identical shards; an int,
# since tarfile writes a float mtime as an extra PAX header before every member


class BuildReport:
    """What a build read, wrote and skipped. Every skip is listed with its reason and
    where it came from; nothing is dropped silently."""

    def __init__(self):
        self.read = 0
        self.written = 0
        self.texts = 0
        self.truncated_texts = 0
        self.skipped: list[dict] = []
        self.notes: list[str] = []
        self.started = time.time()
        self.bytes = 0

    def skip(self, item: object, reason: str, where: str | None = None) -> None:
        entry = {"item": str(item), "reason": reason}
        if where:
            entry["where"] = where
        self.skipped.append(entry)

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(s["reason"] for s in self.skipped).most_common())

    def to_dict(self) -> dict:
        return {
            "read": self.read,
            "written": self.written,
            "texts": self.texts,
            "truncated_texts": self.truncated_texts,
            "skipped_count": len(self.skipped),
            "skipped_by_reason": self.by_reason(),
            "skipped": self.skipped,
            "notes": self.notes,
            "bytes": self.bytes,
            "seconds": round(time.time() - self.started, 3),
        }

    def summary(self, dataset: str) -> str:
        lines = [
            f"build report for {dataset}: read {self.read}, wrote {self.written} samples "
            f"({self.texts} texts, {self.bytes / 1e6:.1f} MB), skipped {len(self.skipped)}"
            + (
                f", truncated {self.truncated_texts} texts' token ids"
                if self.truncated_texts
                else ""
            )
        ]
        for i, (reason, n) in enumerate(self.by_reason().items()):
            if i == MAX_LISTED_REASONS:
                lines.append("  ... (all skips are listed in index.json build_report.skipped)")
                break
            examples = [s for s in self.skipped if s["reason"] == reason][:3]
            shown = ", ".join(
                s["item"] + (f" ({s['where']})" if "where" in s else "") for s in examples
            )
            lines.append(f"  skipped {n} x {reason}: {shown}{' ...' if n > 3 else ''}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


class LabelCounts:
    """Downstream label statistics stored with the shards (`labels.json`), so a loader can
    build the vocabulary of a train split (answers at any min-count, genres, classes)
    without reading it again. Keys: "answers" (VQA-style questions per target answer),
    "genres" (MM-IMDb), and for your own task's `text` records "label" (texts per class)
    and "labels" (texts per label of a multi-label task)."""

    def __init__(self):
        self.answers: Counter = Counter()
        self.counts: dict[str, Counter] = {k: Counter() for k in ("genres", "label", "labels")}

    def add(self, texts: list[dict]) -> None:
        self.answers.update(count_answers(texts))
        for t in texts:
            self.counts["genres"].update(t.get("genres") or [])
            if t.get("kind") == "text":  # SNLI-VE's hypotheses have a `label` of their own
                self.counts["label"].update([t["label"]] if "label" in t else [])
                self.counts["labels"].update(t.get("labels") or [])

    def doc(self) -> dict:
        out = {}
        if self.answers:
            out["answers"] = answers_doc(self.answers)
        for key, counts in self.counts.items():
            if counts:
                out[key] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return out


class ShardWriter:
    """Append samples; shards roll over at `target_shard_bytes`; `commit` writes the manifest."""

    def __init__(
        self,
        storage: Storage,
        url: str,
        dataset: str,
        report: BuildReport,
        *,
        target_shard_bytes: int = 256_000_000,
        progress: bool = True,
        overwrite: bool = False,
        need_texts: bool = True,
    ):
        self.storage, self.url, self.dataset, self.report = (
            storage,
            url.rstrip("/"),
            dataset,
            report,
        )
        self.target = target_shard_bytes
        self.progress = progress
        self.need_texts = need_texts
        index_url = join(self.url, INDEX)
        # Refuse before the caller does any long work; an old set being replaced is only
        # cleared right before the first new shard lands, so a rebuild that fails early
        # leaves it intact.
        self._replace = storage.exists(index_url)
        self._leftovers: list[str] | None = None  # the old set's files, once uncommitted
        if self._replace and not overwrite:
            raise ShardError(
                f"{index_url}: a shard set already exists here; use --overwrite to replace it"
            )
        self.tmpdir: str | None = None
        self.feature_dim: int | None = None
        self.cls_dim: int | None = None
        self.keys: set[str] = set()
        self.shards: list[dict] = []
        self._tar = None  # webdataset.TarWriter of the open shard
        self._offsets: list[int] = []
        self._texts: list[int] = []
        self._labels = LabelCounts()
        self._bar = None

    # -- samples
    def add(self, sample: schema.Sample, where: str | None = None) -> bool:
        """Write `sample`, or count it as skipped with the reason. True when written."""
        item = sample.meta.get("image_id", sample.key)
        reason = schema.check(sample, self.feature_dim, self.cls_dim, self.need_texts)
        if reason is None and sample.key in self.keys:
            reason = f"duplicate sample key '{sample.key}'"
        if reason is not None:
            self.report.skip(item, reason, where)
            return False
        if self.feature_dim is None:
            self.feature_dim = int(sample.feats.shape[1])
        if self.cls_dim is None and sample.cls_prob is not None:
            self.cls_dim = int(sample.cls_prob.shape[1])
        self.keys.add(sample.key)
        if self._tar is None:
            self._open_shard()
        self._offsets.append(self._tar.tarstream.offset)
        self._texts.append(len(sample.texts))
        self._labels.add(sample.texts)
        self._tar.write(schema.encode(sample))
        self.report.written += 1
        self.report.texts += len(sample.texts)
        if self._bar is None:
            self._bar = tqdm(desc=self.dataset, unit=" samples", disable=not self.progress,
                             file=sys.stderr, dynamic_ncols=True)  # fmt: skip
        self._bar.update(1)
        done = self.report.bytes + self._tar.tarstream.offset
        self._bar.set_postfix_str(
            f"{done / 1e6 / max(time.time() - self.report.started, 1e-6):.1f} MB/s", refresh=False
        )
        if self._tar.tarstream.offset >= self.target:
            self._close_shard()
        return True

    def roll(self) -> dict | None:
        """Close the open shard now (callers that cut shards by count, not size); its
        manifest entry, or None when no shard was open."""
        if self._tar is None:
            return None
        self._close_shard()
        return self.shards[-1]

    def adopt(self, entry: dict, keys: list[str], feature_dim: int, cls_dim: int | None) -> None:
        """Count a shard that an earlier, interrupted run of the same build already wrote
        (its entry as `roll` gave it), so a rerun goes on after it."""
        if self.feature_dim is None:
            self.feature_dim, self.cls_dim = feature_dim, cls_dim
        self.shards.append(entry)
        self.keys.update(keys)
        self.report.written += entry["num_samples"]
        self.report.bytes += entry["bytes"]

    def _open_shard(self) -> None:
        import webdataset as wds  # imports torch: only when writing, not for every reader

        if self.tmpdir is None:
            self.tmpdir = tempfile.mkdtemp(prefix="vlpdist-shards-")
        self._local = os.path.join(self.tmpdir, SHARD_NAME.format(len(self.shards)))
        self._file = open(self._local, "wb")  # noqa: SIM115 - closed in _close_shard
        self._tar = wds.TarWriter(
            self._file, user="vlpdist", group="vlpdist", encoder=False, mtime=TAR_MTIME
        )
        self._offsets = []
        self._texts = []

    def _close_shard(self) -> None:
        end = self._tar.tarstream.offset
        self._tar.close()
        self._file.close()
        self._tar = None
        name = os.path.basename(self._local)
        digest = hashlib.sha256()
        with open(self._local, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        size = os.path.getsize(self._local)
        self._uncommit_old()
        self.storage.put_file(self._local, join(self.url, name))
        os.unlink(self._local)
        self.report.bytes += size
        self.shards.append(
            {
                "name": name,
                "num_samples": len(self._offsets),
                "bytes": size,
                "sha256": digest.hexdigest(),
                "offsets": [*self._offsets, end],
                "texts": self._texts,
            }
        )

    # -- commit
    def commit(
        self,
        source: str,
        recipe: dict,
        tokenizer: TextEncoder | None,
        *,
        synthetic: bool = False,
        extra: dict | None = None,
    ) -> dict:
        """Upload the last shard and the tokenizer, then write index.json: from here on the
        set exists. The writer makes every write into the set's directory, so replacing an
        old set is ordered: uncommit it, write the new files over it, commit, drop leftovers."""
        try:
            if self._tar is not None:
                self._close_shard()
            if not self.shards:
                raise ShardError(
                    f"{self.url}: no sample could be written for {self.dataset}:\n"
                    + self.report.summary(self.dataset)
                )
            self._uncommit_old()
            tok_info = tokenizer.save(self.storage, self.url) if tokenizer is not None else None
            manifest = {
                "format": schema.FORMAT,
                "version": schema.VERSION,
                "created_by": f"vlpdist {__version__}",
                "dataset": self.dataset,
                "source": source,
                "synthetic": synthetic,
                "regions_only": not self.need_texts,
                "feature_dim": self.feature_dim,
                "cls_prob_dim": self.cls_dim,
                "box_format": "x1y1x2y2, normalised to [0, 1]",
                "num_samples": sum(s["num_samples"] for s in self.shards),
                "num_texts": self.report.texts,
                "total_bytes": sum(s["bytes"] for s in self.shards),
                "tokenizer": tok_info,
                "recipe": recipe,
                "build_report": self.report.to_dict(),
                "extra": extra or {},
                "shards": self.shards,
            }
            labels = self._labels.doc()
            if labels:
                self.storage.write_text(join(self.url, LABELS), json.dumps(labels, indent=1))
                manifest["labels"] = LABELS
            self.storage.write_text(join(self.url, INDEX), json.dumps(manifest, indent=1))
            self._drop_leftovers(tok_info)
            return manifest
        finally:
            self.abort()

    def _uncommit_old(self) -> None:
        """Before the first write over an old set: remove its manifest, so that from now on
        nobody reads it as complete. Its files are overwritten or dropped at commit."""
        if self._replace and self._leftovers is None:
            self.storage.rm(join(self.url, INDEX))
            self._leftovers = self.storage.ls(self.url)

    def _drop_leftovers(self, tok_info: dict | None) -> None:
        """Delete what the old set had and the new one does not (extra shards, old
        tokenizer files)."""
        keep = {s["name"] for s in self.shards} | {INDEX, LABELS}
        tok_dir = tok_info["path"] if tok_info else None
        for child in self._leftovers or []:
            name = child.rsplit("/", 1)[-1]
            if name == tok_dir:
                for f in self.storage.ls(child):
                    if f.rsplit("/", 1)[-1] not in tok_info["files"]:
                        self.storage.rm(f, recursive=True)
            elif name not in keep:
                self.storage.rm(child, recursive=True)

    def abort(self) -> None:
        """Drop local temporaries (shards already uploaded stay uncommitted: no index.json)."""
        if self._tar is not None:
            self._tar.close()
            self._file.close()
            self._tar = None
        if self._bar is not None:
            self._bar.close()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
