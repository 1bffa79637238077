"""The loader of one rank: a visible list of stages, resumable, with telemetry.

    manifests + shard health (index.py, once, in the training process)
 -> epoch plan: order, mixing, split over ranks and workers        (plan.py, pure)
 -> fetch: byte ranges of the batch's samples, read ahead          (fetch.py, threads)
 -> decode: tar headers → zero-copy arrays + json                  (decode.py)
 -> regions: copy features and boxes into padded batch buffers     (collate.py)
 -> collate: pack texts, mask, targets → Batch                     (collate.py)
(fetch and decode run ahead in a prefetch thread; regions and collate in the worker's own.)

Workers are torch DataLoader processes; worker w builds rank-local batches w, w + n, ...
and the DataLoader takes one batch from each worker in turn, so batches arrive in plan
order whatever the number of workers. `Loader.state_dict()` is (epoch, consumed units);
restoring it on any world size continues with exactly the units not yet consumed.

Faults, by cause (nothing is lost silently, and every rank keeps its number of batches):
- a store that keeps failing (retries up to `storage.retry` exhausted), or refuses access:
  the run stops with one line naming the object; a transient error never costs a sample;
- a shard object that is gone: its samples become flagged pads, the shard is named once
  and counted in `skipped_shards`;
- a truncated shard or a corrupt sample: flagged pads counted in `corrupt_samples`, or the
  run stops naming the object with `data.on_corrupt: fail`.
An error in a loader worker reaches the training process as the same one-line error, not
as the worker's traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vlpdist.config import DataConfig, StorageConfig
from vlpdist.data import cache as C
from vlpdist.data import plan as P
from vlpdist.data.collate import Batch, Collator
from vlpdist.data.decode import CorruptSample, Decoded, decode
from vlpdist.data.fetch import Fetcher
from vlpdist.data.index import Tokenizer, fetch_tokenizer, open_sources
from vlpdist.data.tasks import TASKS
from vlpdist.errors import ShardError, StorageError, VlpdistError
from vlpdist.shards.schema import SNLI_LABELS
from vlpdist.storage import Storage, is_local

log = logging.getLogger(__name__)
STAGES = ("fetch_s", "decode_s", "regions_s", "mask_s", "collate_s")
COUNTERS = ("batches", "samples", "pad_samples", "bytes_read", "requests", "retries",
            "corrupt_samples", "missing_samples", "remote_bytes", "cache_hits", "cache_misses",
            "cache_fills", "cache_fill_bytes", "cache_evictions")  # fmt: skip


class _Failed:
    """A user-facing error raised in a loader worker, handed to the training process as an
    item (DataLoader would re-raise it wrapped in the worker's traceback text)."""

    def __init__(self, error: VlpdistError):
        self.error = error


class _Done:
    """A finished future: `prepare(fn, ...)` run inline where a thread would not help."""

    def __init__(self, fn, *args):
        self._value = fn(*args)

    def result(self):
        return self._value


class ShardStream(IterableDataset):
    """Yields (rank-local step, Batch, telemetry delta) for the current epoch's plan."""

    def __init__(self, cfg: DataConfig, storage_cfg: StorageConfig | None, rank: int, world: int,
                 tokenizer: Tokenizer | None = None):  # fmt: skip
        self.cfg, self.storage_cfg, self.rank, self.world = cfg, storage_cfg, rank, world
        self.task = TASKS[cfg.task]
        storage = Storage(storage_cfg)
        self.sources = open_sources(storage, cfg)
        first = self.sources[0]
        self.tokenizer = fetch_tokenizer(storage, first, reuse=tokenizer)
        vocab = self.task.vocab
        self.labels = vocab(storage, cfg.answer_vocab or first.url, cfg) if vocab else None
        self.collator = Collator(
            cfg, self.tokenizer.info, first.manifest["feature_dim"],
            first.manifest.get("cls_prob_dim"), self.labels,
        )  # fmt: skip
        self.epoch, self.consumed = 0, 0
        self._seq: tuple[int, np.ndarray] | None = None
        self._warned: set[str] = set()  # shards this process has warned about

    def sequence(self, epoch: int) -> np.ndarray:
        """The epoch's global sequence; kept for the current epoch (the loader, its length and
        every worker ask for it; forked workers inherit it)."""
        if self._seq is not None and self._seq[0] == epoch:
            return self._seq[1]
        self._seq = (epoch, self._make_sequence(epoch))
        return self._seq[1]

    def _make_sequence(self, epoch: int) -> np.ndarray:
        c = self.cfg
        orders = [
            P.epoch_order(self.units(i), c.seed, epoch, i, c.shuffle_window, c.read_span)
            for i in range(len(self.sources))
        ]
        weights = [s.weight for s in self.sources]
        return P.global_sequence(orders, weights, c.seed, epoch, c.samples_per_epoch, c.read_span)

    def units(self, source: int) -> np.ndarray:
        units = self.sources[source].plan.units(self.task.per_text)
        return P.subset(units, self.cfg.fraction, self.cfg.subset_seed, source)

    def rank_plan(self) -> P.RankPlan:
        seq = self.sequence(self.epoch)
        return P.split(
            seq, min(self.consumed, len(seq)), self.cfg.batch_size, self.world, self.rank
        )

    def __iter__(self):
        try:
            yield from self._batches()
        except VlpdistError as e:
            yield _Failed(e)

    def _batches(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        plan = self.rank_plan()
        # a fresh Storage per process: filesystem objects must not cross a fork
        storage = Storage(self.storage_cfg)
        cache = self._cache(storage)
        fetcher = Fetcher(storage, self.sources, self.cfg.read_threads, cache)
        # Two threads per worker: the prefetch thread reads and decodes ahead; this one copies
        # regions into the batch buffers (numpy releases the GIL while copying, so it overlaps
        # the other thread's decoding), packs texts and masks.
        # Local shards are mapped files: reading costs nothing to wait for, and extra
        # threads would only contend for the GIL. Remote reads go ahead in threads.
        # (shards already in the node-local cache are local files too)
        remote = not all(is_local(u) or (cache and cache.holds(u))
                         for s in self.sources for u in s.shard_urls)  # fmt: skip
        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlpdist-prefetch")
        copier = (
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="vlpdist-copy") if remote else None
        )
        steps = list(P.worker_steps(plan.steps, worker, workers))
        queue: deque = deque()
        prepare = ahead.submit if remote else _Done
        try:
            for step in steps[: self.cfg.prefetch]:
                queue.append(prepare(self._prepare, fetcher, plan, step, cache))
            for n, step in enumerate(steps):
                t0 = time.perf_counter()
                items, pad, stats = queue.popleft().result()
                stats["wait_prepare_s"] = time.perf_counter() - t0
                if n + self.cfg.prefetch < len(steps):
                    nxt = steps[n + self.cfg.prefetch]
                    queue.append(prepare(self._prepare, fetcher, plan, nxt, cache))
                t1 = time.perf_counter()
                regions = self.collator.regions(items, copier)
                t2 = time.perf_counter()
                entries = plan.entries[step]
                batch = self.collator(
                    items, entries, plan.positions[step], pad, entries[:, P.SOURCE],
                    self.epoch, regions,
                )  # fmt: skip
                stats["regions_s"] = t2 - t1
                stats["mask_s"], self.collator.mask_s = self.collator.mask_s, 0.0
                stats["collate_s"] = time.perf_counter() - t2 - stats["mask_s"]
                yield step, batch, stats
        finally:
            ahead.shutdown(wait=False, cancel_futures=True)
            if copier is not None:
                copier.shutdown(wait=False)
            fetcher.close()
            if cache is not None:
                cache.close()

    def _cache(self, storage: Storage) -> C.ShardCache | None:
        """The node-local cache of this process, planned for this epoch and the next, its
        filling ahead started; None for local shard sets or with the cache off."""
        cache = C.ShardCache.open(self.cfg.cache, storage, self.sources)
        if cache is None:
            return None
        urls = [s.shard_urls for s in self.sources]
        seq = self.sequence(self.epoch)
        cache.plan(C.uses(seq, urls), C.uses(self._make_sequence(self.epoch + 1), urls), len(seq))
        cache.advance(self.consumed)
        cache.start()
        return cache

    def _prepare(self, fetcher: Fetcher, plan: P.RankPlan, step: int, cache=None):
        """fetch → decode → regions of one batch (in the prefetch thread)."""
        stats: dict = {}
        if cache is not None:
            real = plan.positions[step][~plan.pad[step]]
            if len(real):
                cache.advance(int(real.min()))
        raw = fetcher.fetch(plan.entries[step], stats)
        if cache is not None:
            stats.update(cache.take_counts())
        entries, pad = plan.entries[step], plan.pad[step].copy()
        t0 = time.perf_counter()
        items: list[Decoded | None] = []
        for e, data in zip(entries, raw, strict=True):
            url = self.sources[e[P.SOURCE]].shard_urls[e[P.SHARD]]
            try:
                items.append(self._decode(url, int(e[P.SAMPLE]), data, stats))
            except CorruptSample as err:
                if self.cfg.on_corrupt == "fail":
                    raise ShardError(
                        f"{url}: sample {e[P.SAMPLE]}: {err} (data.on_corrupt=fail)"
                    ) from None
                self._warn(url, f"corrupt samples skipped (sample {e[P.SAMPLE]}: {err})")
                stats["corrupt_samples"] = stats.get("corrupt_samples", 0) + 1
                items.append(None)
        lost = np.array([d is None for d in items])
        pad |= lost  # replaced below by a good sample of the batch, flagged
        good = [d for d in items if d is not None]
        # a batch with nothing readable still counts for the ranks' balance: all pads
        fill = good[0] if good else self._blank(entries)
        items = [d if d is not None else fill for d in items]
        stats["decode_s"] = time.perf_counter() - t0
        stats["samples"] = int((~pad).sum())
        stats["pad_samples"] = int(pad.sum())
        per_source = Counter(int(s) for s in entries[~pad, P.SOURCE])
        stats["per_source"] = {self.sources[k].name: v for k, v in per_source.items()}
        return items, pad, stats

    def _decode(self, url: str, sample: int, data, stats: dict) -> Decoded | None:
        """One sample, or None for a sample of a shard that is gone; CorruptSample for bytes
        that are not the sample; a store that keeps failing raises (the run stops)."""
        if isinstance(data, StorageError):
            if data.kind == "not_found":
                self._warn(url, "the shard object is gone; its samples are skipped")
                stats.setdefault("missing_shards", {})[url] = str(data)
                stats["missing_samples"] = stats.get("missing_samples", 0) + 1
                return None
            if data.kind == "short":
                raise CorruptSample(str(data).removeprefix(f"{url}: "))
            raise data
        return decode(data)

    def _blank(self, entries: np.ndarray) -> Decoded:
        """A stand-in sample for a batch of which nothing could be read: one zero region and
        empty texts, valid for every task's collation; always flagged as padding."""
        c = self.collator
        text = {"ids": [], "answers": [], "label": SNLI_LABELS[0], "genres": []}
        return Decoded(
            key="<unreadable>",
            feats=np.zeros((1, c.dim), dtype=np.float16),
            boxes=np.zeros((1, 4), dtype=np.float32),
            cls_prob=np.zeros((1, c.cls_dim), dtype=np.float16) if c.cls_dim else None,
            meta={"texts": [text] * max(1, int(entries[:, P.TEXT].max()) + 1)},
        )

    def _warn(self, url: str, what: str) -> None:
        if url not in self._warned:  # once per shard, not once per sample
            self._warned.add(url)
            log.warning("data: %s: %s", url, what)


class Loader:
    """Batches of one rank, epoch after epoch; `state_dict()` resumes exactly."""

    def __init__(
        self,
        cfg: DataConfig,
        storage_cfg: StorageConfig | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        tokenizer: Tokenizer | None = None,
        pin_memory: bool = False,
    ):
        """`tokenizer`: the one another loader of this process already fetched (the
        evaluation's loader takes the training loader's), not fetched again. `pin_memory`:
        batches in page-locked memory (when CUDA is there), for the training device."""
        self.cfg = cfg
        self.stream = ShardStream(cfg, storage_cfg, rank, world_size, tokenizer)
        self.world = world_size
        self._tel: dict = {"per_source": Counter()}
        self._skipped: dict[str, str] = {
            url: why for s in self.stream.sources for url, why in s.excluded.items()
        }
        self._started = None
        self.pin_memory = pin_memory and torch.cuda.is_available()

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    # -- what the engine, the analyses and the tests ask of a loader, so that nothing
    # outside vlpdist.data reaches into its stream, collator or sources
    @property
    def labels(self) -> list[str] | None:
        """The task's label vocabulary (answers, genres, classes); None in pretraining."""
        return self.stream.labels

    @property
    def vocab_size(self) -> int:
        return self.stream.tokenizer.info.vocab_size

    @property
    def manifest(self) -> dict:
        """The first source's manifest: the one the model is built for (feature dim,
        detector classes, tokenizer); the preflight checks that the others fit it."""
        return self.stream.sources[0].manifest

    @property
    def tokenizer(self) -> Tokenizer:
        """The shard set's tokenizer, fetched once by this loader (or handed to it)."""
        return self.stream.tokenizer

    def tokenizer_dir(self, directory: str) -> str:
        """The shard set's tokenizer files in a local `directory` (for exports, probes)."""
        return self.stream.tokenizer.save(directory)

    def provenance(self) -> list[dict]:
        """Which data, exactly: URL, samples, a digest of each source's manifest."""
        out = []
        for s in self.stream.sources:
            digest = hashlib.sha256(json.dumps(s.manifest, sort_keys=True).encode()).hexdigest()
            out.append({"url": s.url, "samples": int(s.plan.samples.sum()),
                        "manifest_sha256": digest,
                        "synthetic": bool(s.manifest.get("synthetic"))})  # fmt: skip
        return out

    def collate(self, samples: list[Decoded], position: int = 0) -> Batch:
        """The batch that decoded `samples` make under this loader's collation (masking,
        padding, targets), as if they stood at `position` of epoch 0: what another
        pipeline's samples become here, for comparisons (`vlpdist bench data`)."""
        b = len(samples)
        return self.stream.collator(samples, np.full((b, 4), -1, dtype=np.int64),
                                    np.arange(position, position + b), np.zeros(b, bool),
                                    np.zeros(b, np.int64), 0)  # fmt: skip

    def units(self) -> int:
        """Training units per epoch over all sources (images in pretraining, else texts)."""
        return sum(len(self.stream.units(i)) for i in range(len(self.stream.sources)))

    def __len__(self) -> int:
        """Batches left in the current epoch on this rank."""
        return self.stream.rank_plan().steps

    def __iter__(self):
        s = self.stream
        epoch_len = len(s.sequence(s.epoch))
        loader = DataLoader(
            s, batch_size=None, num_workers=self.cfg.num_workers,
            prefetch_factor=2 if self.cfg.num_workers else None,
            # page-locked batches for an asynchronous copy to the GPU (Batch.pin_memory)
            pin_memory=self.pin_memory,
            # its own generator: DataLoader draws a base seed per iterator, which must not
            # come from (and advance) the global generator that dropout draws from, or a
            # resumed run would not draw the masks of an uninterrupted one
            generator=torch.Generator(),
        )  # fmt: skip
        self._started = self._started or time.perf_counter()
        t0 = time.perf_counter()
        for item in loader:
            if isinstance(item, _Failed):
                raise item.error from None
            _step, batch, delta = item
            self._tel["wait_s"] = self._tel.get("wait_s", 0.0) + time.perf_counter() - t0
            self._add(delta)
            s.consumed = min(epoch_len, s.consumed + self.cfg.batch_size * self.world)
            yield batch
            t0 = time.perf_counter()
        s.epoch, s.consumed = s.epoch + 1, 0

    def _add(self, delta: dict) -> None:
        self._tel["batches"] = self._tel.get("batches", 0) + 1
        for k, v in delta.items():
            if k == "per_source":
                self._tel["per_source"].update(v)
            elif k == "missing_shards":
                self._skipped.update(v)
            else:
                self._tel[k] = self._tel.get(k, 0) + v

    def skipped_shards(self) -> dict[str, str]:
        """Shards of which nothing could be read, by URL, with why."""
        return dict(self._skipped)

    def counters(self) -> dict[str, float]:
        """Cumulative numbers since the loader started, flat (what the trainer logs as
        deltas): samples, pads, bytes, requests, retries, lost samples, seconds per stage."""
        t = self._tel
        out = {k: t.get(k, 0) for k in COUNTERS}
        out.update({k: t.get(k, 0.0) for k in ("wait_s", "wait_prepare_s", *STAGES)})
        return out

    def telemetry(self) -> dict:
        """Counters and stage timings since the loader started (a dict the trainer logs)."""
        out = self.counters()
        seconds = {k: round(out.pop(k), 4) for k in ("wait_s", "wait_prepare_s", *STAGES)}
        elapsed = time.perf_counter() - self._started if self._started else 0.0
        out.update({
            "samples_per_s": round(out["samples"] / elapsed, 2) if elapsed else 0.0,
            "skipped_shards": len(self._skipped),
            "seconds": seconds,
            "per_source": dict(self._tel["per_source"]),
            "epoch": self.stream.epoch,
            "consumed": self.stream.consumed,
        })  # fmt: skip
        return out

    def state_dict(self) -> dict:
        s = self.stream
        return {
            "epoch": s.epoch,
            "consumed": s.consumed,
            "seed": self.cfg.seed,
            "fraction": [self.cfg.fraction, self.cfg.subset_seed],
            "sources": [[src.url, int(src.plan.samples.sum())] for src in s.sources],
        }

    def load_state_dict(self, state: dict) -> None:
        s = self.stream
        here = [[src.url, int(src.plan.samples.sum())] for src in s.sources]
        frac = [self.cfg.fraction, self.cfg.subset_seed]
        if state.get("sources") != here or state.get("seed") != self.cfg.seed:
            raise VlpdistError(
                f"data state was saved for sources {state.get('sources')} and seed "
                f"{state.get('seed')}; this loader streams {here} with seed {self.cfg.seed}"
            )
        if state.get("fraction", [1.0, 0]) != frac:
            raise VlpdistError(
                f"data state was saved for data.fraction/subset_seed {state.get('fraction')}; "
                f"this loader streams {frac}"
            )
        s.epoch, s.consumed = int(state["epoch"]), int(state["consumed"])


__all__ = ["Batch", "Loader", "ShardStream"]
