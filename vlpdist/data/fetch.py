"""Reading the bytes of a batch's samples: one byte range per sample from the manifest's
offsets (adjacent ones coalesced), concurrent, retried by the storage layer.

Range reads instead of streaming whole shards: with the plan's windowed shuffle, every
consumer needs samples spread over several shards; reading each sample's own range means
every byte is read exactly once across all ranks and workers, and skipping a consumed part
of an epoch costs nothing. Local files are memory-mapped: a sample is a zero-copy view.
Remote shards go through the node-local cache when there is one (cache.py): a view of the
cached copy, or a range read from storage for a shard the cache could not take.
"""

from __future__ import annotations

import functools
import mmap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vlpdist.data.cache import ShardCache
from vlpdist.data.index import Source
from vlpdist.data.plan import SAMPLE, SHARD, SOURCE
from vlpdist.errors import StorageError
from vlpdist.storage import Storage, is_local, split_protocol

MAX_RUN = 32 << 20  # cap of one coalesced read


class Fetcher:
    def __init__(self, storage: Storage, sources: list[Source], threads: int,
                 cache: ShardCache | None = None):  # fmt: skip
        self.storage, self.sources, self.cache = storage, sources, cache
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vlpdist-read")
        self._maps: dict[str, mmap.mmap] = {}  # local shards, mapped once per worker
        self._missing: dict[str, StorageError] = {}  # shards found gone: not asked for again
        self._lock = threading.Lock()  # reader threads share the counters and descriptors

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._maps.clear()  # unmapped once the last view into a map is gone

    def fetch(self, entries: np.ndarray, stats: dict) -> list[memoryview | StorageError]:
        """The bytes of each entry's sample, or the `StorageError` that kept it from being
        read (its `kind` says why: 'not_found', 'short', or retries exhausted); bytes,
        requests, retries and seconds are added to `stats`."""
        out: list[memoryview | StorageError] = [StorageError("not read")] * len(entries)
        runs = self._runs(entries)
        t0 = time.perf_counter()
        retries_before = self.storage.retries
        read = functools.partial(self._read_run, stats=stats)
        # local runs are zero-copy views of a mapped file: cheaper than a thread hand-off
        local = all(is_local(url) or (self.cache and self.cache.holds(url)) for url, *_ in runs)
        results = map(read, runs) if local else self.pool.map(read, runs)
        for (url, start, _end, members), got in zip(runs, results, strict=True):
            for i, lo, hi in members:
                if isinstance(got, Exception):
                    out[i] = got
                elif len(got) < hi - start:
                    # only the samples past the end are lost: those before it decode
                    out[i] = StorageError(
                        f"{url}: ends at byte {start + len(got)}, the manifest's sample ends "
                        f"at {hi} (truncated shard)", "short",
                    )  # fmt: skip
                else:
                    out[i] = got[lo - start : hi - start]
        with self._lock:
            stats["fetch_s"] = stats.get("fetch_s", 0.0) + time.perf_counter() - t0
            stats["retries"] = stats.get("retries", 0) + self.storage.retries - retries_before
        return out

    def _runs(self, entries: np.ndarray) -> list[tuple[str, int, int, list]]:
        """Group entries by shard; merge samples whose byte ranges touch."""
        ranges: dict[str, list[tuple[int, int, int]]] = {}
        for i, e in enumerate(entries):
            src: Source = self.sources[e[SOURCE]]
            off = src.offsets[e[SHARD]]
            ranges.setdefault(src.shard_urls[e[SHARD]], []).append(
                (int(off[e[SAMPLE]]), int(off[e[SAMPLE] + 1]), i)
            )
        runs = []
        for url, items in ranges.items():
            items.sort()
            start, end, members = items[0][0], items[0][1], []
            for lo, hi, i in items:
                if lo > end or hi - start > MAX_RUN:
                    runs.append((url, start, end, members))
                    start, members = lo, []
                end = max(end, hi)
                members.append((i, lo, hi))
            runs.append((url, start, end, members))
        return runs

    def _read_run(self, run, stats: dict) -> memoryview | StorageError:
        url, start, end, _ = run
        if url in self._missing:
            return self._missing[url]
        try:
            if is_local(url):
                with self._lock:
                    mm = self._maps.get(url)
                    if mm is None:
                        # not MAP_POPULATE: faulting pages in as they are copied measured
                        # faster than pre-faulting whole shards (bench data, 2 cores)
                        with open(split_protocol(url)[1], "rb") as f:
                            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                            self._maps[url] = mm
                data = memoryview(mm)[start : min(end, len(mm))]  # zero-copy view
            else:
                data = self.cache.view(url, start, end) if self.cache else None
                if data is None:
                    data = self.storage.read_bytes(url, start, end)
                    with self._lock:
                        stats["remote_bytes"] = stats.get("remote_bytes", 0) + len(data)
        except FileNotFoundError:
            return self._gone(url, StorageError(f"{url}: not found", "not_found"))
        except OSError as e:
            return StorageError(f"{url}: {e.strerror or e}")
        except StorageError as e:
            return self._gone(url, e) if e.kind == "not_found" else e
        with self._lock:
            stats["bytes_read"] = stats.get("bytes_read", 0) + len(data)
            stats["requests"] = stats.get("requests", 0) + 1
        return data if isinstance(data, memoryview) else memoryview(data)

    def _gone(self, url: str, err: StorageError) -> StorageError:
        with self._lock:
            self._missing[url] = err
        return err
